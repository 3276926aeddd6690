//! The OpenAPI 3.0 document served at `/openapi.json`. Response schemas are generated from the
//! very types the handlers serialise (schemars); request schemas mirror the field-by-field
//! parsers in `api::resources`; paths come from one route table per resource. The integration
//! tests compare this document with the router (every documented operation is routed) and an
//! external fuzzer (schemathesis) checks responses against it.

use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::api::timetravel::{OffsetSnapshot, ReplayResult, Timeline};
use crate::domain::{self, *};
use crate::error::Problem;
use crate::model::*;
use crate::replay::{ReplayJob, StateAt};

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn money() -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]{1,10}(\\.[0-9]{1,2})?$", "example": "19.99"})
}

fn positive_money() -> Value {
    json!({"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,2})?$", "example": "19.99"})
}

fn rate() -> Value {
    json!({"type": "string", "pattern": "^(0(\\.[0-9]{1,4})?|1(\\.0{1,4})?)$", "example": "0.2"})
}

fn enum_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

fn text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "\\S"})
}

fn strs<T: Copy + std::fmt::Display>(all: &[T]) -> Vec<String> {
    all.iter().map(|s| s.to_string()).collect()
}

fn obj(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": props, "required": required})
}

fn request_schemas() -> Map<String, Value> {
    let cur: Vec<&str> = domain::CURRENCIES.to_vec();
    let currency = json!({"type": "string", "enum": cur});
    let version = json!({"type": "integer", "format": "int64", "minimum": 1});
    let date = json!({"type": "string", "format": "date", "example": "2030-01-31"});
    let uuid = json!({"type": "string", "format": "uuid"});
    let email = json!({"type": "string", "format": "email", "maxLength": 254, "example": "ada@example.com"});
    let phone = json!({"type": "string", "pattern": "^\\+?[0-9][0-9 -]{5,18}$", "maxLength": 20});
    let national = json!({"type": "string", "pattern": "^[A-Za-z0-9-]{1,32}$"});
    let customer_props = json!({
        "firstName": text(100), "lastName": text(100), "email": email, "phone": phone, "nationalId": national,
    });
    let mut customer_update = customer_props.clone();
    customer_update["version"] = version.clone();
    let features = json!({"type": "object", "maxProperties": 50,
        "additionalProperties": {"type": "string", "maxLength": 256}});
    let product_props = json!({
        "code": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,50}$"},
        "name": text(200), "description": text(2000),
        "productType": enum_of(&ProductType::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        "category": enum_of(&ProductCategory::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        "price": positive_money(), "currency": currency, "billingPeriod":
            enum_of(&BillingPeriod::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        "features": features,
    });
    let mut product_update = product_props.clone();
    if let Some(o) = product_update.as_object_mut() {
        o.remove("code");
        o.insert("version".into(), version.clone());
    }
    let order_item = obj(
        json!({"productId": uuid, "quantity": {"type": "integer", "minimum": 1, "maximum": 10000},
               "unitPrice": positive_money(), "taxRate": rate()}),
        &["productId", "quantity"],
    );
    let items = json!({"type": "array", "minItems": 1, "maxItems": 100, "items": order_item});
    let priority = enum_of(
        &OrderPriority::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    let invoice_item = obj(
        json!({"description": text(500), "quantity": {"type": "integer", "minimum": 1, "maximum": 10000},
               "unitPrice": money(), "taxRate": rate()}),
        &["description", "quantity", "unitPrice"],
    );
    let invoice_items =
        json!({"type": "array", "minItems": 1, "maxItems": 200, "items": invoice_item});
    let mut m = Map::new();
    m.insert(
        "CustomerCreate".into(),
        obj(customer_props, &["firstName", "lastName", "email"]),
    );
    m.insert(
        "CustomerUpdate".into(),
        obj(
            customer_update,
            &["firstName", "lastName", "email", "version"],
        ),
    );
    m.insert(
        "ProductCreate".into(),
        obj(
            product_props,
            &[
                "code",
                "name",
                "productType",
                "category",
                "price",
                "currency",
                "billingPeriod",
            ],
        ),
    );
    m.insert(
        "ProductUpdate".into(),
        obj(
            product_update,
            &[
                "name",
                "productType",
                "category",
                "price",
                "currency",
                "billingPeriod",
                "version",
            ],
        ),
    );
    m.insert("OrderCreate".into(), obj(json!({
        "customerId": uuid, "orderType": enum_of(&OrderType::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        "priority": priority, "currency": currency, "notes": text(2000), "items": items,
    }), &["customerId", "currency", "items"]));
    m.insert(
        "OrderUpdate".into(),
        obj(
            json!({"priority": priority, "notes": text(2000), "items": items, "version": version}),
            &["priority", "items", "version"],
        ),
    );
    m.insert("SubscriptionCreate".into(), obj(json!({
        "customerId": uuid, "productId": uuid, "orderId": uuid, "startDate": date, "endDate": date,
        "nextBillingDate": date, "price": positive_money(), "discount": positive_money(), "currency": currency,
        "autoRenew": {"type": "boolean"},
    }), &["customerId", "productId"]));
    m.insert("SubscriptionUpdate".into(), obj(json!({
        "autoRenew": {"type": "boolean"}, "discount": positive_money(), "endDate": date, "version": version,
    }), &["autoRenew", "discount", "version"]));
    m.insert(
        "VersionOnly".into(),
        obj(json!({"version": version}), &["version"]),
    );
    m.insert("InvoiceCreate".into(), obj(json!({
        "customerId": uuid, "invoiceType": enum_of(&InvoiceType::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        "issueDate": date, "dueDate": date, "currency": currency, "items": invoice_items,
    }), &["customerId", "dueDate", "currency", "items"]));
    m.insert(
        "InvoiceUpdate".into(),
        obj(
            json!({"dueDate": date, "items": invoice_items, "version": version}),
            &["dueDate", "items", "version"],
        ),
    );
    m.insert("PaymentCreate".into(), obj(json!({
        "customerId": uuid, "invoiceId": uuid,
        "amount": {"type": "string", "pattern": "^(0\\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,9}(\\.[0-9]{1,2})?)$", "example": "49.99"},
        "currency": currency,
        "method": enum_of(&PaymentMethod::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
    }), &["customerId", "amount", "currency", "method"]));
    for (name, statuses) in [
        ("Customer", strs(CustomerStatus::ALL)),
        ("Product", strs(ProductStatus::ALL)),
        ("Order", strs(OrderStatus::ALL)),
        ("Subscription", strs(SubscriptionStatus::ALL)),
        ("Invoice", strs(InvoiceStatus::ALL)),
        ("Payment", strs(PaymentStatus::ALL)),
    ] {
        m.insert(format!("{name}StatusChange"), obj(json!({
            "status": {"type": "string", "enum": statuses}, "version": version, "reason": text(500),
        }), &["status", "version"]));
    }
    m.insert("ReplayRequest".into(), obj(json!({
        "topic": {"type": "string", "pattern": "^bss\\.[A-Za-z0-9._-]{1,190}$"},
        "from": {"type": "string", "format": "date-time"},
        "to": {"type": "string", "format": "date-time"},
        "speed": {"oneOf": [{"type": "string", "enum": ["max"]}, {"type": "number", "exclusiveMinimum": true, "minimum": 0, "maximum": 1000000}]},
        "targetTopic": {"type": "string", "pattern": "^bss\\.[A-Za-z0-9._-]{1,190}$"},
    }), &["topic", "from", "to"]));
    m.insert(
        "SnapshotRequest".into(),
        obj(
            json!({
                "topics": {"type": "array", "minItems": 1, "maxItems": 20,
                           "items": {"type": "string", "pattern": "^bss\\.[A-Za-z0-9._-]{1,190}$"}},
            }),
            &[],
        ),
    );
    m
}

fn response_schemas() -> (Map<String, Value>, Map<String, Value>) {
    let mut gen = SchemaGenerator::new(SchemaSettings::openapi3());
    fn add<T: JsonSchema>(gen: &mut SchemaGenerator, out: &mut Map<String, Value>, name: &str) {
        let s = gen.subschema_for::<T>();
        out.insert(
            name.to_string(),
            serde_json::to_value(s).unwrap_or(Value::Null),
        );
    }
    let mut named = Map::new();
    add::<Page<Customer>>(&mut gen, &mut named, "CustomerPage");
    add::<Page<Product>>(&mut gen, &mut named, "ProductPage");
    add::<Page<Order>>(&mut gen, &mut named, "OrderPage");
    add::<Page<Subscription>>(&mut gen, &mut named, "SubscriptionPage");
    add::<Page<Invoice>>(&mut gen, &mut named, "InvoicePage");
    add::<Page<Payment>>(&mut gen, &mut named, "PaymentPage");
    add::<Customer>(&mut gen, &mut named, "Customer");
    add::<Product>(&mut gen, &mut named, "Product");
    add::<Order>(&mut gen, &mut named, "Order");
    add::<Subscription>(&mut gen, &mut named, "Subscription");
    add::<Invoice>(&mut gen, &mut named, "Invoice");
    add::<Payment>(&mut gen, &mut named, "Payment");
    add::<Problem>(&mut gen, &mut named, "Problem");
    add::<ReplayResult>(&mut gen, &mut named, "ReplayResult");
    add::<ReplayJob>(&mut gen, &mut named, "ReplayJob");
    add::<StateAt>(&mut gen, &mut named, "StateAt");
    add::<Timeline>(&mut gen, &mut named, "Timeline");
    add::<OffsetSnapshot>(&mut gen, &mut named, "OffsetSnapshot");
    add::<Vec<OffsetSnapshot>>(&mut gen, &mut named, "OffsetSnapshotList");
    let defs: Map<String, Value> = gen
        .definitions()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect();
    (named, defs)
}

fn problem(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/problem+json": {"schema": r("Problem")}}})
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

/// Standard error responses of an authenticated operation, plus the given ones.
fn responses(success: &[(&str, Value)], errors: &[u16]) -> Value {
    let mut m = Map::new();
    for (code, v) in success {
        m.insert(code.to_string(), v.clone());
    }
    let mut codes: Vec<u16> = vec![401, 403, 429, 503];
    codes.extend_from_slice(errors);
    codes.sort();
    codes.dedup();
    for c in codes {
        let d = match c {
            400 => "invalid request: every bad field is listed",
            401 => "missing API key",
            403 => "unknown API key",
            404 => "not found",
            409 => "illegal transition, stale version, read-only or duplicate",
            415 => "body is not JSON",
            422 => "a referenced resource is missing or unusable",
            429 => "too many requests in flight",
            503 => "a dependency is unavailable",
            _ => "error",
        };
        m.insert(c.to_string(), problem(d));
    }
    Value::Object(m)
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": r(schema)}}})
}

fn id_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}})
}

fn query(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

struct Resource {
    ty: &'static str,
    plural: &'static str,
    statuses: Vec<String>,
    sortable: Vec<&'static str>,
    has_customer: bool,
    update: bool,
    delete: bool,
}

fn resources() -> Vec<Resource> {
    fn sort_names<E: Entity>() -> Vec<&'static str> {
        E::SORTABLE.iter().map(|(n, _)| *n).collect()
    }
    vec![
        Resource {
            ty: "Customer",
            plural: "customers",
            statuses: strs(CustomerStatus::ALL),
            sortable: sort_names::<Customer>(),
            has_customer: false,
            update: true,
            delete: true,
        },
        Resource {
            ty: "Product",
            plural: "products",
            statuses: strs(ProductStatus::ALL),
            sortable: sort_names::<Product>(),
            has_customer: false,
            update: true,
            delete: true,
        },
        Resource {
            ty: "Order",
            plural: "orders",
            statuses: strs(OrderStatus::ALL),
            sortable: sort_names::<Order>(),
            has_customer: true,
            update: true,
            delete: true,
        },
        Resource {
            ty: "Subscription",
            plural: "subscriptions",
            statuses: strs(SubscriptionStatus::ALL),
            sortable: sort_names::<Subscription>(),
            has_customer: true,
            update: true,
            delete: false,
        },
        Resource {
            ty: "Invoice",
            plural: "invoices",
            statuses: strs(InvoiceStatus::ALL),
            sortable: sort_names::<Invoice>(),
            has_customer: true,
            update: true,
            delete: true,
        },
        Resource {
            ty: "Payment",
            plural: "payments",
            statuses: strs(PaymentStatus::ALL),
            sortable: sort_names::<Payment>(),
            has_customer: true,
            update: false,
            delete: false,
        },
    ]
}

fn list_params(res: &Resource, with_customer: bool) -> Vec<Value> {
    let mut sorts = Vec::new();
    for s in &res.sortable {
        sorts.push(format!("{s},asc"));
        sorts.push(format!("{s},desc"));
        sorts.push(s.to_string());
    }
    let mut v = vec![
        query(
            "page",
            json!({"type": "integer", "minimum": 0, "maximum": 100000, "default": 0}),
        ),
        query(
            "size",
            json!({"type": "integer", "minimum": 1, "maximum": 200, "default": 20}),
        ),
        query("sort", json!({"type": "string", "enum": sorts})),
        query("status", json!({"type": "string", "enum": res.statuses})),
        query(
            "createdFrom",
            json!({"type": "string", "format": "date-time"}),
        ),
        query(
            "createdTo",
            json!({"type": "string", "format": "date-time"}),
        ),
    ];
    if with_customer {
        v.push(query(
            "customerId",
            json!({"type": "string", "format": "uuid"}),
        ));
    }
    if res.ty == "Invoice" {
        v.push(query("overdue", json!({"type": "boolean"})));
    }
    v
}

/// Every documented (method, path) pair, in axum's `{param}` syntax.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (p, item) in paths {
            if let Some(ops) = item.as_object() {
                for m in ops.keys().filter(|k| *k != "parameters") {
                    out.push((m.to_uppercase(), p.clone()));
                }
            }
        }
    }
    out
}

pub fn document() -> Value {
    let mut paths = Map::new();
    let op_id = |verb: &str, what: &str| format!("{verb}{what}");
    let auth_headers = json!({"Location": {"description": "URL of the created resource", "schema": {"type": "string"}}});
    for res in resources() {
        let ty = res.ty;
        let base = format!("/api/v1/{}", res.plural);
        let created = json!({"description": "created", "headers": auth_headers,
            "content": {"application/json": {"schema": r(ty)}}});
        paths.insert(base.clone(), json!({
            "post": {"operationId": op_id("create", ty), "tags": [res.plural], "requestBody": body(&format!("{ty}Create")),
                     "responses": responses(&[("201", created)], &[400, 409, 415, 422])},
            "get": {"operationId": op_id("list", ty), "tags": [res.plural], "parameters": list_params(&res, res.has_customer),
                    "responses": responses(&[("200", ok("a page", r(&format!("{ty}Page"))))], &[400])},
        }));
        let mut item = Map::new();
        item.insert("get".into(), json!({"operationId": op_id("get", ty), "tags": [res.plural],
            "parameters": [id_param("id"), {"name": "X-Read-Consistency", "in": "header", "required": false,
                "schema": {"type": "string", "enum": ["strong", "eventual"]}}],
            "responses": responses(&[("200", ok("the resource", r(ty)))], &[400, 404])}));
        if res.update {
            item.insert("put".into(), json!({"operationId": op_id("update", ty), "tags": [res.plural],
                "parameters": [id_param("id")], "requestBody": body(&format!("{ty}Update")),
                "responses": responses(&[("200", ok("updated", r(ty)))], &[400, 404, 409, 415, 422])}));
        }
        if res.delete {
            item.insert("delete".into(), json!({"operationId": op_id("delete", ty), "tags": [res.plural],
                "parameters": [id_param("id")],
                "responses": responses(&[("204", json!({"description": "deleted"}))], &[400, 404, 409])}));
        }
        paths.insert(format!("{base}/{{id}}"), Value::Object(item));
        paths.insert(format!("{base}/{{id}}/status"), json!({"post": {"operationId": op_id("changeStatusOf", ty),
            "tags": [res.plural], "parameters": [id_param("id")], "requestBody": body(&format!("{ty}StatusChange")),
            "responses": responses(&[("200", ok("status changed", r(ty)))], &[400, 404, 409, 415, 422])}}));
        if res.has_customer {
            let params: Vec<Value> = std::iter::once(id_param("id"))
                .chain(list_params(&res, false))
                .collect();
            paths.insert(format!("/api/v1/customers/{{id}}/{}", res.plural), json!({"get": {
                "operationId": op_id("listCustomer", &format!("{ty}s")), "tags": ["customers"],
                "parameters": params,
                "responses": responses(&[("200", ok("a page (cached, invalidated by the database)", r(&format!("{ty}Page"))))], &[400, 404])}}));
        }
    }
    paths.insert("/api/v1/subscriptions/{id}/renew".into(), json!({"post": {"operationId": "renewSubscription",
        "tags": ["subscriptions"], "parameters": [id_param("id")], "requestBody": body("VersionOnly"),
        "responses": responses(&[("200", ok("renewed", r("Subscription")))], &[400, 404, 409, 415, 422])}}));
    paths.insert("/api/v1/replay".into(), json!({"post": {"operationId": "replay", "tags": ["replay"],
        "description": "Replays the events of a topic between two instants. Without targetTopic the events are returned; with it they are re-published by a background job.",
        "requestBody": body("ReplayRequest"),
        "responses": responses(&[("200", ok("the events of the window", r("ReplayResult"))),
            ("202", json!({"description": "replay job started", "headers": auth_headers,
                           "content": {"application/json": {"schema": r("ReplayJob")}}}))], &[400, 415, 422])}}));
    paths.insert("/api/v1/replay/{id}".into(), json!({"get": {"operationId": "replayJob", "tags": ["replay"],
        "parameters": [id_param("id")], "responses": responses(&[("200", ok("job status", r("ReplayJob")))], &[400, 404])}}));
    let entity = json!({"name": "entity", "in": "path", "required": true,
        "schema": {"type": "string", "enum": crate::kafka::ENTITIES}});
    paths.insert("/api/v1/history/{entity}/{id}".into(), json!({"get": {"operationId": "stateAt", "tags": ["replay"],
        "parameters": [entity, id_param("id"), query("at", json!({"type": "string", "format": "date-time"}))],
        "responses": responses(&[("200", ok("state at the instant", r("StateAt")))], &[400, 422])}}));
    paths.insert("/api/v1/history/{entity}/{id}/timeline".into(), json!({"get": {"operationId": "timeline", "tags": ["replay"],
        "parameters": [entity, id_param("id"), query("from", json!({"type": "string", "format": "date-time"})),
                       query("to", json!({"type": "string", "format": "date-time"}))],
        "responses": responses(&[("200", ok("events of the entity", r("Timeline")))], &[400, 422])}}));
    let group = json!({"name": "group", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"}});
    paths.insert("/api/v1/consumer-groups/{group}/snapshots".into(), json!({
        "post": {"operationId": "takeOffsetSnapshot", "tags": ["replay"], "parameters": [group],
                 "requestBody": {"required": false, "content": {"application/json": {"schema": r("SnapshotRequest")}}},
                 "responses": responses(&[("201", ok("snapshot taken", r("OffsetSnapshot")))], &[400, 415, 422])},
        "get": {"operationId": "listOffsetSnapshots", "tags": ["replay"], "parameters": [group],
                "responses": responses(&[("200", ok("snapshots, newest first", r("OffsetSnapshotList")))], &[400])},
    }));
    paths.insert("/api/v1/consumer-groups/{group}/snapshots/{snapshot}/restore".into(), json!({"post": {
        "operationId": "restoreOffsetSnapshot", "tags": ["replay"], "parameters": [group, id_param("snapshot")],
        "responses": responses(&[("200", ok("offsets restored", r("OffsetSnapshot")))], &[400, 404, 422])}}));
    let open = json!([]);
    paths.insert("/health/live".into(), json!({"get": {"operationId": "live", "tags": ["ops"], "security": open,
        "responses": {"200": ok("alive", json!({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}))}}}));
    paths.insert("/health/ready".into(), json!({"get": {"operationId": "ready", "tags": ["ops"], "security": open,
        "responses": {"200": ok("database, cache and broker reachable", json!({"type": "object", "required": ["status"]})),
                      "503": problem("a dependency is unreachable")}}}));
    paths.insert("/metrics".into(), json!({"get": {"operationId": "metrics", "tags": ["ops"], "security": open,
        "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}));
    paths.insert(
        "/openapi.json".into(),
        json!({"get": {"operationId": "openapi", "tags": ["ops"], "security": open,
        "responses": {"200": ok("this document", json!({"type": "object"}))}}}),
    );

    let (named, defs) = response_schemas();
    let mut schemas = defs;
    for (k, v) in named {
        // Named entries that are plain references to a definition keep the definition's name.
        if v.get("$ref").is_none() {
            schemas.insert(k, v);
        } else if let Some(target) = v["$ref"].as_str().and_then(|s| s.rsplit('/').next()) {
            if target != k {
                schemas.insert(k, v.clone());
            }
        }
    }
    schemas.extend(request_schemas());
    json!({
        "openapi": "3.0.3",
        "info": {"title": "BSS backend", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Customers, products, orders, subscriptions, invoices and payments; replay and time travel. Errors are RFC 7807 problem+json with a stable code."},
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    })
}
