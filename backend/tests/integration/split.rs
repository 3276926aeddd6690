//! Read/write split and the load generator, against the real stack.

use crate::api::customer;
use crate::test_support::*;
use std::time::Duration;

/// The read pool is a different database here (standing in for a lagging replica behind the
/// HAProxy read port): lists come from it, writes and read-your-write reads from the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_use_the_read_port_and_writes_the_primary() {
    let stack = Stack::start().await;
    stack.pg.psql("SELECT 1");
    let admin = std::process::Command::new(tool("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &stack.pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-c", "CREATE DATABASE bss_read OWNER bss_app"])
        .output()
        .unwrap();
    assert!(admin.status.success());
    let mut cfg = stack.config();
    let read_url = format!("{}_read", cfg.database.write_url);
    let read_pool = backend::db::pool(&read_url, cfg.database.password.as_deref(), 2).unwrap();
    backend::db::migrate(&read_pool).await.unwrap();
    cfg.database.read_url = Some(read_url);
    let running = backend::server::start(cfg).await.unwrap();
    let api = Api::new(running.addr);
    let c = customer(&api, "Split").await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/api/v1/customers/{id}")).await.status,
        200,
        "by id: primary"
    );
    let lagging = api.get("/api/v1/customers").await;
    assert_eq!(lagging.body["totalItems"], 0, "lists: read port");
    let strong = api
        .client
        .get(format!("{}/api/v1/customers", api.base))
        .header("x-api-key", API_KEY)
        .header("x-read-consistency", "strong")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        strong["totalItems"], 1,
        "read-your-write goes to the primary"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_runs_the_mix_open_loop() {
    let f = crate::api::fixture().await;
    let args = backend::loadgen::Args {
        target: Some(f.api.base.clone()),
        api_key: Some(API_KEY.into()),
        rate: 40.0,
        duration: 3.0,
        warmup: 1.0,
        timeout_ms: 5000,
        max_in_flight: 1000,
        seed_customers: 5,
        json: true,
        seed: 7,
    };
    let r = backend::loadgen::generate(&args, None).await.unwrap();
    assert_eq!(r.scheduled, 120);
    assert_eq!(r.completed, 120);
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_kind);
    assert!(r.ops.len() >= 6, "the mix reaches most flows: {:?}", r.ops);
    assert!(r.latency_ms.p99 > 0.0 && r.latency_ms.p99 < 2000.0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.running.shutdown().await;
}
