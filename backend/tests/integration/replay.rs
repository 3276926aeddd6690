//! Replay and time travel against the real broker: a replay returns exactly the events of the
//! window; replay into a topic; state at an instant and timeline; offset snapshot and restore.

use crate::api::{customer, fixture};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

async fn drained(pool: &sqlx::PgPool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
            .fetch_one(pool)
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pause() -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = Utc::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_exactly_the_window_and_time_travel_works() {
    let f = fixture().await;
    let api = &f.api;
    let pool = f.running.state.write.clone();

    // Phase A.
    let x = customer(api, "Xavier").await;
    let xid = x["id"].as_str().unwrap().to_string();
    for i in 0..5 {
        customer(api, &format!("A{i}")).await;
    }
    let t1 = pause().await;
    // Phase B: the window.
    let r = api
        .put(
            &format!("/api/v1/customers/{xid}"),
            json!({"firstName": "Xenia", "lastName": "Xavier", "email": x["email"], "version": 1}),
        )
        .await;
    assert_eq!(r.status, 200);
    for i in 0..7 {
        customer(api, &format!("B{i}")).await;
    }
    let t2 = pause().await;
    // Phase C.
    for i in 0..4 {
        customer(api, &format!("C{i}")).await;
    }
    assert_eq!(
        api.delete(&format!("/api/v1/customers/{xid}")).await.status,
        204
    );
    drained(&pool).await;

    let expected: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT event_id FROM outbox WHERE topic = 'bss.customer.events' AND created_at >= $1 AND created_at < $2",
    )
    .bind(t1)
    .bind(t2)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|u| u.to_string())
    .collect();
    assert_eq!(expected.len(), 8);

    let r = api
        .post(
            "/api/v1/replay",
            json!({"topic": "bss.customer.events", "from": t1.to_rfc3339(), "to": t2.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<String> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        got.len(),
        8,
        "no duplicates, nothing outside the window: {got:?}"
    );
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), expected);
    assert_eq!(
        r.body["ranges"].as_array().unwrap().len(),
        3,
        "offsets for times on every partition"
    );

    // Replay into a topic at a scaled speed, as a background job.
    let r = api
        .post(
            "/api/v1/replay",
            json!({"topic": "bss.customer.events", "from": t1.to_rfc3339(), "to": t2.to_rfc3339(),
                                       "speed": 100, "targetTopic": "bss.replay.test"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.headers["location"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = api.get(&job).await;
        if j.body["state"] == "COMPLETED" {
            assert_eq!(j.body["published"], 8);
            break;
        }
        assert_ne!(j.body["state"], "FAILED", "{}", j.body);
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let brokers = f.stack.kafka.brokers();
    let replayed = tokio::task::spawn_blocking(move || {
        crate::test_support::consume_all(&brokers, "bss.replay.test", 8, Duration::from_secs(20))
    })
    .await
    .unwrap();
    let ids: HashSet<String> = replayed
        .iter()
        .map(|m| m.1["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, expected);
    assert!(
        replayed
            .iter()
            .all(|m| m.1["source"] == format!("urn:bss:customer:{}", m.0)),
        "keys preserved"
    );

    // Time travel: state at instants and the timeline.
    let at = |t: DateTime<Utc>| {
        format!(
            "/api/v1/history/customer/{xid}?at={}",
            t.to_rfc3339().replace('+', "%2B")
        )
    };
    let s1 = api.get(&at(t1)).await;
    assert_eq!(s1.status, 200, "{}", s1.body);
    assert_eq!(
        (
            s1.body["exists"].as_bool(),
            s1.body["state"]["firstName"].as_str()
        ),
        (Some(true), Some("Ada"))
    );
    let s2 = api.get(&at(t2)).await;
    assert_eq!(s2.body["state"]["firstName"], "Xenia");
    assert_eq!(s2.body["version"], 2);
    let s3 = api.get(&format!("/api/v1/history/customer/{xid}")).await;
    assert_eq!(s3.body["exists"], false);
    let before = api.get(&at(t1 - chrono::Duration::hours(1))).await;
    assert_eq!(before.body["exists"], false);
    let tl = api
        .get(&format!("/api/v1/history/customer/{xid}/timeline"))
        .await;
    let types: Vec<&str> = tl.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "com.bss.customer.created.v1",
            "com.bss.customer.updated.v1",
            "com.bss.customer.deleted.v1"
        ]
    );

    // Offset snapshots of a consumer group, and restore.
    let brokers = f.stack.kafka.brokers();
    let group = "bss-snapshot-test";
    let set = |o: [i64; 3]| {
        let b = brokers.clone();
        let offs: Vec<backend::replay::GroupOffset> = (0..3)
            .map(|p| backend::replay::GroupOffset {
                topic: "bss.customer.events".into(),
                partition: p,
                offset: o[p as usize],
            })
            .collect();
        std::thread::spawn(move || backend::replay::restore_offsets(&b, group, &offs).unwrap())
            .join()
            .unwrap();
    };
    set([1, 2, 3]);
    let snap = api
        .post(
            &format!("/api/v1/consumer-groups/{group}/snapshots"),
            json!({"topics": ["bss.customer.events"]}),
        )
        .await;
    assert_eq!(snap.status, 201, "{}", snap.body);
    let offsets: Vec<i64> = snap.body["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3]);
    set([4, 4, 4]);
    let sid = snap.body["id"].as_str().unwrap();
    let r = api
        .post(
            &format!("/api/v1/consumer-groups/{group}/snapshots/{sid}/restore"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = f.stack.kafka.brokers();
    let now = std::thread::spawn(move || {
        backend::replay::committed_offsets(&b, group, &["bss.customer.events".to_string()]).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(now.iter().map(|o| o.offset).collect::<Vec<_>>(), [1, 2, 3]);
    let list = api
        .get(&format!("/api/v1/consumer-groups/{group}/snapshots"))
        .await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    f.running.shutdown().await;
}
