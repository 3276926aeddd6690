use crate::test_support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_customer_create_get_and_event() {
    let stack = Stack::start().await;
    let running = backend::server::start(stack.config()).await.unwrap();
    let api = Api::new(running.addr);
    let r = api
        .post(
            "/api/v1/customers",
            json!({"firstName":"Ada","lastName":"Lovelace","email":"ada@example.com"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let g = api.get(&format!("/api/v1/customers/{id}")).await;
    assert_eq!(g.status, 200);
    let msgs = consume_all(
        &stack.kafka.brokers(),
        "bss.customer.events",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, id);
    running.shutdown().await;
}
