//! API behaviour against the real stack: life cycles (every allowed and every refused
//! transition of every resource), validation, optimistic locking, references, auth, paging.

use crate::test_support::*;
use serde_json::{json, Value};

pub use crate::test_support::{customer, fixture};

pub async fn product(api: &Api, price: &str) -> Value {
    let r = api
        .post(
            "/api/v1/products",
            json!({"code": format!("P-{}", uuid::Uuid::new_v4().simple()), "name": "Fiber 1000",
                   "productType": "TARIFF", "category": "BROADBAND", "price": price,
                   "currency": "EUR", "billingPeriod": "MONTHLY", "features": {"speed": "1000"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

pub async fn order(api: &Api, cust: &str, prod: &str) -> Value {
    let r = api
        .post(
            "/api/v1/orders",
            json!({"customerId": cust, "currency": "EUR", "priority": "HIGH",
                   "items": [{"productId": prod, "quantity": 3, "taxRate": "0.2"},
                             {"productId": prod, "quantity": 1, "unitPrice": "0.10"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

pub async fn invoice(api: &Api, cust: &str) -> Value {
    let r = api
        .post(
            "/api/v1/invoices",
            json!({"customerId": cust, "dueDate": "2099-01-31", "currency": "EUR",
                   "items": [{"description": "Fiber", "quantity": 1, "unitPrice": "49.99", "taxRate": "0.19"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn status(api: &Api, plural: &str, e: &Value, to: &str) -> crate::test_support::Resp {
    api.post(
        &format!("/api/v1/{plural}/{}/status", e["id"].as_str().unwrap()),
        json!({"status": to, "version": e["version"], "reason": "test"}),
    )
    .await
}

/// The answer is a problem of this status and code.
fn assert_problem(r: &crate::test_support::Resp, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (status, Some(code)),
        "{}",
        r.body
    );
}

/// Drives a fresh entity along `path`, then tries every target status from there.
async fn sweep(
    api: &Api,
    plural: &str,
    all: &[&str],
    paths: &[(&str, &[&str])],
    allowed: &[(&str, &str)],
    make: &(dyn Fn() -> futures::future::BoxFuture<'static, Value> + Sync),
) {
    for (from, path) in paths {
        for to in all {
            let mut e = make().await;
            for step in *path {
                let r = status(api, plural, &e, step).await;
                assert_eq!(r.status, 200, "{plural}: path step to {step}: {}", r.body);
                e = r.body;
            }
            assert_eq!(e["status"], *from);
            let r = status(api, plural, &e, to).await;
            let expect_ok = allowed.contains(&(*from, *to));
            if expect_ok {
                assert_eq!(
                    r.status, 200,
                    "{plural} {from} -> {to} must be allowed: {}",
                    r.body
                );
                assert_eq!(r.body["status"], *to);
                assert_eq!(r.body["version"], e["version"].as_i64().unwrap() + 1);
            } else {
                assert_eq!(
                    r.status, 409,
                    "{plural} {from} -> {to} must be refused: {}",
                    r.body
                );
                assert_eq!(r.body["code"], "ILLEGAL_TRANSITION");
                assert_eq!(r.headers["content-type"], "application/problem+json");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lifecycle_rule_of_every_resource() {
    let f = fixture().await;
    let api = std::sync::Arc::new(Api::new(f.running.addr));
    let cust = customer(&api, "Sweep").await;
    let cid = cust["id"].as_str().unwrap().to_string();
    let prod = product(&api, "10.00").await;
    let pid = prod["id"].as_str().unwrap().to_string();

    let a = api.clone();
    sweep(
        &api,
        "customers",
        &["ACTIVE", "INACTIVE", "SUSPENDED", "TERMINATED"],
        &[
            ("ACTIVE", &[]),
            ("INACTIVE", &["INACTIVE"]),
            ("SUSPENDED", &["SUSPENDED"]),
            ("TERMINATED", &["TERMINATED"]),
        ],
        &[
            ("ACTIVE", "INACTIVE"),
            ("ACTIVE", "SUSPENDED"),
            ("ACTIVE", "TERMINATED"),
            ("INACTIVE", "ACTIVE"),
            ("INACTIVE", "TERMINATED"),
            ("SUSPENDED", "ACTIVE"),
            ("SUSPENDED", "TERMINATED"),
        ],
        &move || {
            let a = a.clone();
            Box::pin(async move { customer(&a, "S").await })
        },
    )
    .await;

    let a = api.clone();
    let prods = [
        "ACTIVE",
        "INACTIVE",
        "DEPRECATED",
        "SUSPENDED",
        "DISCONTINUED",
    ];
    let mut allowed_p = Vec::new();
    for x in prods {
        for y in prods {
            if x != y && x != "DISCONTINUED" {
                allowed_p.push((x, y));
            }
        }
    }
    sweep(
        &api,
        "products",
        &prods,
        &[
            ("ACTIVE", &[]),
            ("INACTIVE", &["INACTIVE"]),
            ("DEPRECATED", &["DEPRECATED"]),
            ("SUSPENDED", &["SUSPENDED"]),
            ("DISCONTINUED", &["DISCONTINUED"]),
        ],
        &allowed_p,
        &move || {
            let a = a.clone();
            Box::pin(async move { product(&a, "1.00").await })
        },
    )
    .await;

    let (a, c2, p2) = (api.clone(), cid.clone(), pid.clone());
    sweep(
        &api,
        "orders",
        &[
            "PENDING",
            "APPROVED",
            "IN_PROGRESS",
            "PROCESSING",
            "COMPLETED",
            "REJECTED",
            "CANCELLED",
        ],
        &[
            ("PENDING", &[]),
            ("APPROVED", &["APPROVED"]),
            ("IN_PROGRESS", &["APPROVED", "IN_PROGRESS"]),
            ("PROCESSING", &["APPROVED", "IN_PROGRESS", "PROCESSING"]),
            (
                "COMPLETED",
                &["APPROVED", "IN_PROGRESS", "PROCESSING", "COMPLETED"],
            ),
            ("REJECTED", &["REJECTED"]),
            ("CANCELLED", &["CANCELLED"]),
        ],
        &[
            ("PENDING", "APPROVED"),
            ("APPROVED", "IN_PROGRESS"),
            ("IN_PROGRESS", "PROCESSING"),
            ("PROCESSING", "COMPLETED"),
            ("PENDING", "REJECTED"),
            ("PENDING", "CANCELLED"),
            ("APPROVED", "CANCELLED"),
            ("IN_PROGRESS", "CANCELLED"),
        ],
        &move || {
            let (a, c, p) = (a.clone(), c2.clone(), p2.clone());
            Box::pin(async move { order(&a, &c, &p).await })
        },
    )
    .await;

    let (a, c2, p2) = (api.clone(), cid.clone(), pid.clone());
    sweep(
        &api,
        "subscriptions",
        &["ACTIVE", "SUSPENDED", "CANCELLED", "EXPIRED"],
        &[
            ("ACTIVE", &[]),
            ("SUSPENDED", &["SUSPENDED"]),
            ("CANCELLED", &["CANCELLED"]),
            ("EXPIRED", &["EXPIRED"]),
        ],
        &[
            ("ACTIVE", "SUSPENDED"),
            ("SUSPENDED", "ACTIVE"),
            ("ACTIVE", "CANCELLED"),
            ("ACTIVE", "EXPIRED"),
            ("SUSPENDED", "CANCELLED"),
            ("SUSPENDED", "EXPIRED"),
        ],
        &move || {
            let (a, c, p) = (a.clone(), c2.clone(), p2.clone());
            Box::pin(async move {
                let r = a
                    .post(
                        "/api/v1/subscriptions",
                        json!({"customerId": c, "productId": p}),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                r.body
            })
        },
    )
    .await;

    let (a, c2) = (api.clone(), cid.clone());
    sweep(
        &api,
        "invoices",
        &["DRAFT", "SENT", "VIEWED", "PAID", "CANCELLED"],
        &[
            ("DRAFT", &[]),
            ("SENT", &["SENT"]),
            ("VIEWED", &["SENT", "VIEWED"]),
            ("PAID", &["SENT", "PAID"]),
            ("CANCELLED", &["CANCELLED"]),
        ],
        &[
            ("DRAFT", "SENT"),
            ("SENT", "VIEWED"),
            ("SENT", "PAID"),
            ("VIEWED", "PAID"),
            ("DRAFT", "CANCELLED"),
            ("SENT", "CANCELLED"),
            ("VIEWED", "CANCELLED"),
        ],
        &move || {
            let (a, c) = (a.clone(), c2.clone());
            Box::pin(async move { invoice(&a, &c).await })
        },
    )
    .await;

    let (a, c2) = (api.clone(), cid.clone());
    sweep(
        &api,
        "payments",
        &["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED", "REFUNDED"],
        &[("PENDING", &[]), ("PROCESSING", &["PROCESSING"]), ("COMPLETED", &["COMPLETED"]), ("FAILED", &["FAILED"]),
          ("CANCELLED", &["CANCELLED"]), ("REFUNDED", &["COMPLETED", "REFUNDED"])],
        &[("PENDING", "PROCESSING"), ("PENDING", "COMPLETED"), ("PENDING", "FAILED"), ("PENDING", "CANCELLED"),
          ("PROCESSING", "COMPLETED"), ("PROCESSING", "FAILED"), ("FAILED", "CANCELLED"), ("COMPLETED", "REFUNDED")],
        &move || {
            let (a, c) = (a.clone(), c2.clone());
            Box::pin(async move {
                let r = a.post("/api/v1/payments", json!({"customerId": c, "amount": "12.34", "currency": "EUR", "method": "CARD"})).await;
                assert_eq!(r.status, 201, "{}", r.body);
                r.body
            })
        },
    )
    .await;
    f.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_locking_references_auth_and_paging() {
    let f = fixture().await;
    let api = &f.api;

    // Every bad field is listed at once, with a stable code.
    let r = api
        .post(
            "/api/v1/customers",
            json!({"firstName": "", "email": "nope", "phone": "12ab", "shoeSize": 44}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["code"], "VALIDATION_FAILED");
    let mut fields: Vec<String> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["email", "firstName", "lastName", "phone", "shoeSize"]
    );
    // Malformed JSON and wrong media type are 4xx problems, never 500.
    let r = api
        .client
        .post(format!("{}/api/v1/customers", api.base))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = api
        .client
        .post(format!("{}/api/v1/customers", api.base))
        .header("x-api-key", API_KEY)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Authentication.
    let r = api.send("GET", "/api/v1/customers", None, None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let r = api
        .send("GET", "/api/v1/customers", None, Some("wrong"))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    let r = api
        .send("GET", "/api/v1/customers", None, Some("other-key"))
        .await;
    assert_eq!(r.status, 200);

    // Uniqueness, optimistic locking, read-only final state.
    let c = customer(api, "Lock").await;
    let id = c["id"].as_str().unwrap();
    let email = c["email"].as_str().unwrap();
    let r = api
        .post(
            "/api/v1/customers",
            json!({"firstName": "B", "lastName": "C", "email": email}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("DUPLICATE"))
    );
    let body = json!({"firstName": "Ada", "lastName": "King", "email": email, "version": 1});
    let r = api
        .put(&format!("/api/v1/customers/{id}"), body.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    let r = api
        .put(&format!("/api/v1/customers/{id}"), body.clone())
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("STALE_VERSION"))
    );
    let r = api
        .post(
            &format!("/api/v1/customers/{id}/status"),
            json!({"status": "TERMINATED", "version": 2}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .put(
            &format!("/api/v1/customers/{id}"),
            json!({"firstName": "X", "lastName": "Y", "email": email, "version": 3}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("READ_ONLY"))
    );

    // 404 and bad ids.
    let r = api
        .get(&format!("/api/v1/orders/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = api.get("/api/v1/orders/not-a-uuid").await;
    assert_eq!(r.status, 400);

    // Orders: at least one item, broken references are 422, exact money, items editable only while PENDING.
    let c = customer(api, "Orders").await;
    let cid = c["id"].as_str().unwrap();
    let p = product(api, "19.99").await;
    let pid = p["id"].as_str().unwrap();
    let r = api
        .post(
            "/api/v1/orders",
            json!({"customerId": cid, "currency": "EUR", "items": []}),
        )
        .await;
    assert_eq!(r.status, 400);
    let ghost = uuid::Uuid::new_v4();
    let r = api.post("/api/v1/orders", json!({"customerId": ghost, "currency": "EUR", "items": [{"productId": ghost, "quantity": 1}]})).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("BROKEN_REFERENCE"))
    );
    assert_eq!(
        r.body["errors"].as_array().unwrap().len(),
        1,
        "customer checked before items: {}",
        r.body
    );
    let o = order(api, cid, pid).await;
    // 3 × 19.99 = 59.97, tax 20 % = 11.99 (11.994); 1 × 0.10 untaxed.
    assert_eq!(o["subtotal"], "60.07");
    assert_eq!(o["taxAmount"], "11.99");
    assert_eq!(o["totalAmount"], "72.06");
    assert_eq!(o["status"], "PENDING");
    let oid = o["id"].as_str().unwrap();
    let r = api
        .put(
            &format!("/api/v1/orders/{oid}"),
            json!({"priority": "LOW", "items": [{"productId": pid, "quantity": 2}], "version": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["totalAmount"], "39.98");
    let r = api
        .post(
            &format!("/api/v1/orders/{oid}/status"),
            json!({"status": "APPROVED", "version": 2}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .put(
            &format!("/api/v1/orders/{oid}"),
            json!({"priority": "LOW", "items": [{"productId": pid, "quantity": 5}], "version": 3}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("READ_ONLY"))
    );
    let r = api.delete(&format!("/api/v1/orders/{oid}")).await;
    assert_eq!(r.status, 409);

    // Payment of a whole invoice marks it PAID; refunds need a reason.
    let inv = invoice(api, cid).await;
    assert_eq!(inv["totalAmount"], "59.49");
    let iid = inv["id"].as_str().unwrap();
    let r = api
        .post(
            &format!("/api/v1/invoices/{iid}/status"),
            json!({"status": "SENT", "version": 1}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = api.post("/api/v1/payments", json!({"customerId": cid, "invoiceId": iid, "amount": "59.49", "currency": "EUR", "method": "BANK_TRANSFER"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pay = r.body;
    let payid = pay["id"].as_str().unwrap();
    let r = api
        .post(
            &format!("/api/v1/payments/{payid}/status"),
            json!({"status": "COMPLETED", "version": 1}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["processedAt"].is_string());
    let r = api.get(&format!("/api/v1/invoices/{iid}")).await;
    assert_eq!(r.body["status"], "PAID");
    assert!(r.body["paidDate"].is_string());
    let r = api
        .post(
            &format!("/api/v1/payments/{payid}/status"),
            json!({"status": "REFUNDED", "version": 2}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["errors"][0]["field"].as_str()),
        (400, Some("reason"))
    );
    let r = api
        .post(
            &format!("/api/v1/payments/{payid}/status"),
            json!({"status": "REFUNDED", "version": 2, "reason": "goodwill"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["refundReason"], "goodwill");
    let r = api
        .post(
            "/api/v1/payments",
            json!({"customerId": cid, "amount": "0", "currency": "EUR", "method": "CARD"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .post(
            "/api/v1/payments",
            json!({"customerId": cid, "amount": "1", "currency": "XXX", "method": "CARD"}),
        )
        .await;
    assert_eq!(r.status, 400);

    // Subscriptions: discount ≤ price; renew only when auto-renew and due.
    let r = api
        .post(
            "/api/v1/subscriptions",
            json!({"customerId": cid, "productId": pid, "discount": "20.00"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api
        .post(
            "/api/v1/subscriptions",
            json!({"customerId": cid, "productId": pid}),
        )
        .await;
    let sub = r.body;
    let sid = sub["id"].as_str().unwrap();
    let r = api
        .post(
            &format!("/api/v1/subscriptions/{sid}/renew"),
            json!({"version": 1}),
        )
        .await;
    assert_eq!(r.status, 409, "not due yet: {}", r.body);
    let r = api.post("/api/v1/subscriptions", json!({"customerId": cid, "productId": pid, "startDate": "2020-01-15", "nextBillingDate": "2020-02-15"})).await;
    let due = r.body;
    let did = due["id"].as_str().unwrap();
    let r = api
        .post(
            &format!("/api/v1/subscriptions/{did}/renew"),
            json!({"version": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["nextBillingDate"], "2020-03-15");
    let r = api
        .put(
            &format!("/api/v1/subscriptions/{did}"),
            json!({"autoRenew": false, "discount": "1.00", "version": 2}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api
        .post(
            &format!("/api/v1/subscriptions/{did}/renew"),
            json!({"version": 3}),
        )
        .await;
    assert_eq!(r.status, 409, "no auto-renew: {}", r.body);

    // Paging and filters.
    let r = api
        .get(&format!(
            "/api/v1/orders?customerId={cid}&size=1&page=0&sort=createdAt,asc&status=APPROVED"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["totalItems"], 1);
    let r = api
        .get("/api/v1/orders?size=0&sort=bogus&status=NOPE")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 3);
    let r = api.get(&format!("/api/v1/customers/{cid}/invoices")).await;
    assert_eq!((r.status, r.body["totalItems"].as_i64()), (200, Some(1)));
    f.running.shutdown().await;
}

/// Orders are priced against products as last read, and status changes decide on rows as the
/// backend last wrote them, without reading first: changes made meanwhile by another client
/// (psql here, bumping no version) must still be seen, in the answer as in what is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_decided_without_a_read_see_other_clients_changes() {
    let f = fixture().await;
    let api = &f.api;
    let pg = &f.stack.pg;
    let c = customer(api, "Remembered").await;
    let cid = c["id"].as_str().unwrap();
    let p = product(api, "10.00").await;
    let pid = p["id"].as_str().unwrap();
    let o1 = order(api, cid, pid).await;
    assert_eq!(o1["items"][0]["unitPrice"], "10.00");

    // A new price: the next order is priced at it, in the answer and in the database.
    pg.psql(&format!(
        "UPDATE products SET price = 12.00 WHERE id = '{pid}'"
    ));
    let o2 = order(api, cid, pid).await;
    assert_eq!(o2["items"][0]["unitPrice"], "12.00", "{o2}");
    let o2id = o2["id"].as_str().unwrap();
    assert_eq!(
        pg.psql(&format!(
            "SELECT unit_price FROM order_items WHERE order_id = '{o2id}' AND line_no = 0"
        )),
        "12.00"
    );
    // A discontinued product: 422, as when it was read first.
    pg.psql(&format!(
        "UPDATE products SET status = 'DISCONTINUED' WHERE id = '{pid}'"
    ));
    let new_order = json!({"customerId": cid, "currency": "EUR",
                           "items": [{"productId": pid, "quantity": 1}]});
    let r = api.post("/api/v1/orders", new_order.clone()).await;
    assert_problem(&r, 422, "BROKEN_REFERENCE");
    // A customer no longer ACTIVE: 422 as well.
    pg.psql(&format!(
        "UPDATE products SET status = 'ACTIVE' WHERE id = '{pid}'"
    ));
    let _ = order(api, cid, pid).await;
    pg.psql(&format!(
        "UPDATE customers SET status = 'SUSPENDED' WHERE id = '{cid}'"
    ));
    let r = api.post("/api/v1/orders", new_order).await;
    assert_problem(&r, 422, "BROKEN_REFERENCE");
    pg.psql(&format!(
        "UPDATE customers SET status = 'ACTIVE' WHERE id = '{cid}'"
    ));

    // The order as the backend wrote it was changed by psql (same version): the status change
    // answers, and writes into its event, the row as it is now.
    let o1id = o1["id"].as_str().unwrap();
    pg.psql(&format!(
        "UPDATE orders SET notes = 'set by psql' WHERE id = '{o1id}'"
    ));
    let r = status(api, "orders", &o1, "APPROVED").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["notes"], "set by psql", "{}", r.body);
    assert_eq!(r.body["version"], 2);
    let approved = r.body;
    assert_eq!(
        pg.psql(&format!(
            "SELECT payload->'data'->>'notes' FROM outbox WHERE aggregate_id = '{o1id}' \
             AND event_type = 'com.bss.order.approved.v1'"
        )),
        "set by psql"
    );
    // A stale version is still 409, an illegal transition too (both decided on a read).
    let r = status(api, "orders", &o1, "IN_PROGRESS").await;
    assert_problem(&r, 409, "STALE_VERSION");
    let r = status(api, "orders", &approved, "COMPLETED").await;
    assert_problem(&r, 409, "ILLEGAL_TRANSITION");

    // A payment completed against a remembered invoice that psql has paid meanwhile: the
    // invoice is not marked PAID a second time.
    let inv = invoice(api, cid).await;
    let r = status(api, "invoices", &inv, "SENT").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = r.body;
    let iid = sent["id"].as_str().unwrap();
    let r = api
        .post(
            "/api/v1/payments",
            json!({"customerId": cid, "invoiceId": iid, "amount": sent["totalAmount"],
                   "currency": "EUR", "method": "CARD"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pay = r.body;
    pg.psql(&format!(
        "UPDATE invoices SET status = 'PAID', paid_date = current_date WHERE id = '{iid}'"
    ));
    let r = status(api, "payments", &pay, "COMPLETED").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM outbox WHERE aggregate_id = '{iid}' \
             AND event_type = 'com.bss.invoice.paid.v1'"
        )),
        "0",
        "psql had paid the invoice already"
    );
    assert_eq!(
        pg.psql(&format!("SELECT version FROM invoices WHERE id = '{iid}'")),
        "2"
    );
    // And one the API sent and nobody touched is paid in the payment's statement.
    let inv = invoice(api, cid).await;
    let sent = status(api, "invoices", &inv, "SENT").await.body;
    let iid = sent["id"].as_str().unwrap();
    let pay = api
        .post(
            "/api/v1/payments",
            json!({"customerId": cid, "invoiceId": iid, "amount": sent["totalAmount"],
                   "currency": "EUR", "method": "CARD"}),
        )
        .await
        .body;
    let r = status(api, "payments", &pay, "COMPLETED").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        pg.psql(&format!(
            "SELECT status || ' ' || version FROM invoices WHERE id = '{iid}'"
        )),
        "PAID 3"
    );
    f.running.shutdown().await;
}
