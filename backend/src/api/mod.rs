//! HTTP API: router, authentication, request metrics, and the handlers shared by all resources
//! (get, list, status transitions, delete). Resource-specific create/update live in `resources`.

pub mod input;
pub mod ops;
pub mod resources;
pub mod timetravel;
pub mod write;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use crate::cache::{self, Cache};
use crate::domain::Lifecycle;
use crate::error::{ApiResult, AppError};
use crate::events::{self, CloudEvent};
use crate::metrics::Metrics;
use crate::model::{Customer, Entity, Invoice, Order, Page, Payment, Product, Subscription};

/// Table of an entity name (`order` → `orders`).
pub fn plural_of(entity: &str) -> Option<&'static str> {
    Some(match entity {
        "customer" => Customer::PLURAL,
        "product" => Product::PLURAL,
        "order" => Order::PLURAL,
        "subscription" => Subscription::PLURAL,
        "invoice" => Invoice::PLURAL,
        "payment" => Payment::PLURAL,
        _ => return None,
    })
}
use crate::store::{self, ListQuery};
use input::{path_id, Fields, QueryFields};

pub struct AppState {
    pub write: sqlx::PgPool,
    pub read: sqlx::PgPool,
    pub cache: Cache,
    pub metrics: Metrics,
    /// SHA-256 of each accepted API key (the keys themselves are not kept).
    pub api_key_hashes: HashSet<[u8; 32]>,
    pub topic_prefix: String,
    pub brokers: String,
    pub producer: Option<rdkafka::producer::FutureProducer>,
    pub in_flight: AtomicUsize,
    /// API requests in flight above which new ones are shed at once with 429 + Retry-After:
    /// the bound of the only queue in front of the database pool.
    pub max_in_flight: usize,
    pub replay_jobs: crate::replay::Jobs,
    /// Products as last read by order creation (checked again by each order's statement).
    pub product_refs: resources::ProductRefs,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn topic(&self, entity: &str) -> String {
        format!("{}.{}.events", self.topic_prefix, entity)
    }
}

pub fn hash_key(k: &str) -> [u8; 32] {
    Sha256::digest(k.as_bytes()).into()
}

pub fn app(state: Shared) -> Router {
    let api = Router::new()
        .route(
            "/customers",
            post(resources::create_customer).get(list::<Customer>),
        )
        .route(
            "/customers/{id}",
            get(get_one::<Customer>)
                .put(resources::update_customer)
                .delete(delete::<Customer>),
        )
        .route("/customers/{id}/status", post(change_status::<Customer>))
        .route("/customers/{id}/orders", get(customer_list::<Order>))
        .route(
            "/customers/{id}/subscriptions",
            get(customer_list::<Subscription>),
        )
        .route("/customers/{id}/invoices", get(customer_list::<Invoice>))
        .route("/customers/{id}/payments", get(customer_list::<Payment>))
        .route(
            "/products",
            post(resources::create_product).get(list::<Product>),
        )
        .route(
            "/products/{id}",
            get(get_one::<Product>)
                .put(resources::update_product)
                .delete(delete::<Product>),
        )
        .route("/products/{id}/status", post(change_status::<Product>))
        .route("/orders", post(resources::create_order).get(list::<Order>))
        .route(
            "/orders/{id}",
            get(get_one::<Order>)
                .put(resources::update_order)
                .delete(delete::<Order>),
        )
        .route("/orders/{id}/status", post(change_status::<Order>))
        .route(
            "/subscriptions",
            post(resources::create_subscription).get(list::<Subscription>),
        )
        .route(
            "/subscriptions/{id}",
            get(get_one::<Subscription>).put(resources::update_subscription),
        )
        .route(
            "/subscriptions/{id}/status",
            post(change_status::<Subscription>),
        )
        .route(
            "/subscriptions/{id}/renew",
            post(resources::renew_subscription),
        )
        .route(
            "/invoices",
            post(resources::create_invoice).get(list::<Invoice>),
        )
        .route(
            "/invoices/{id}",
            get(get_one::<Invoice>)
                .put(resources::update_invoice)
                .delete(delete::<Invoice>),
        )
        .route("/invoices/{id}/status", post(change_status::<Invoice>))
        .route(
            "/payments",
            post(resources::create_payment).get(list::<Payment>),
        )
        .route("/payments/{id}", get(get_one::<Payment>))
        .route("/payments/{id}/status", post(change_status::<Payment>))
        .merge(timetravel::routes())
        .layer(middleware::from_fn_with_state(state.clone(), auth));

    Router::new()
        .nest("/api/v1", api)
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request by matched route; sheds API requests above `max_in_flight`.
async fn observe(State(st): State<Shared>, req: Request, next: Next) -> Response {
    // MatchedPath is an Arc<str>: cloned, not copied, on every request.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str());
    let method = req.method().clone();
    let start = Instant::now();
    // A guard, not a decrement after `await`: a request whose client went away is dropped
    // mid-flight, and its slot must still be given back.
    let slot = InFlight::enter(&st);
    let resp = if slot.n >= st.max_in_flight && route.starts_with("/api/") {
        st.metrics.shed_total.with_label_values(&[route]).inc();
        AppError::TooManyRequests.into_response()
    } else {
        next.run(req).await
    };
    drop(slot);
    let resp = as_problem(resp).await;
    let status = resp.status();
    st.metrics
        .http_requests_total
        .with_label_values(&[route, method.as_str(), status.as_str()])
        .inc();
    st.metrics
        .http_request_duration_seconds
        .with_label_values(&[route, method.as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// One request counted in `AppState::in_flight` until dropped.
struct InFlight<'a> {
    st: &'a AppState,
    /// Requests in flight before this one.
    n: usize,
}

impl<'a> InFlight<'a> {
    fn enter(st: &'a AppState) -> Self {
        let n = st.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight { st, n }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.st.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Turns error responses produced outside our handlers (axum's extractor rejections: bad path
/// or query encoding, body too large, …) into problem+json, so every error has one shape.
async fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&bytes)
        .chars()
        .take(500)
        .collect::<String>();
    let code = match status.as_u16() {
        400 => "MALFORMED_REQUEST",
        404 => "ROUTE_NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        413 => "PAYLOAD_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        422 => "UNPROCESSABLE",
        _ if status.is_server_error() => "INTERNAL",
        _ => "REQUEST_REJECTED",
    };
    let problem = crate::error::Problem {
        type_: format!(
            "https://bss.example/problems/{}",
            code.to_lowercase().replace('_', "-")
        ),
        title: status.canonical_reason().unwrap_or("error").to_string(),
        status: status.as_u16(),
        detail: if status.is_server_error() {
            "an internal error occurred".into()
        } else {
            detail
        },
        code: code.to_string(),
        errors: Vec::new(),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_string(&problem).unwrap_or_default(),
    )
        .into_response()
}

/// API-key authentication: header `X-API-Key`. Missing → 401, unknown → 403.
async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        None => AppError::Unauthenticated.into_response(),
        Some(k) if st.api_key_hashes.contains(&hash_key(k.trim())) => next.run(req).await,
        Some(_) => AppError::Forbidden.into_response(),
    }
}

/// `X-Read-Consistency: strong` reads the primary and skips the cache (read-your-writes).
fn strong(headers: &HeaderMap) -> bool {
    headers
        .get("x-read-consistency")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("strong"))
}

pub async fn load_cached<E: Entity>(st: &Shared, id: Uuid) -> ApiResult<Option<E>> {
    let pool = st.write.clone();
    // Cache fills read the primary: a lagging replica must never re-populate a key that was
    // just invalidated with an old row.
    st.cache
        .get_or_load::<E, _, _>(
            E::NAME,
            cache::entity_key(E::NAME, id),
            vec![cache::entity_gen(E::NAME, id)],
            move || async move { store::fetch_pool::<E>(&pool, id).await },
        )
        .await
}

pub async fn get_one<E: Entity>(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<E>> {
    let id = path_id(&id)?;
    let found = if strong(&headers) {
        store::fetch_pool::<E>(&st.write, id).await?
    } else {
        load_cached::<E>(&st, id).await?
    };
    found.map(Json).ok_or_else(|| store::not_found::<E>(id))
}

pub fn parse_list_query<E: Entity>(q: &HashMap<String, String>) -> ApiResult<ListQuery> {
    let mut f = QueryFields::new(q);
    let page = f.int("page", 0, 0, 100_000);
    let size = f.int("size", 20, 1, 200);
    let mut sort_column = "created_at";
    let mut descending = true;
    if let Some(s) = f.str("sort") {
        let (field, dir) = s.split_once(',').unwrap_or((s, "desc"));
        match E::SORTABLE.iter().find(|(n, _)| *n == field) {
            Some((_, col)) => sort_column = col,
            None => {
                let names: Vec<&str> = E::SORTABLE.iter().map(|(n, _)| *n).collect();
                f.error(
                    "sort",
                    format!("field must be one of: {}", names.join(", ")),
                );
            }
        }
        match dir.to_ascii_lowercase().as_str() {
            "asc" => descending = false,
            "desc" => descending = true,
            _ => f.error("sort", "direction must be asc or desc"),
        }
    }
    let status = f.str("status").map(str::to_string);
    if let Some(s) = &status {
        if !E::statuses().contains(&s.as_str()) {
            f.error(
                "status",
                format!("must be one of: {}", E::statuses().join(", ")),
            );
        }
    }
    let customer_id = if E::HAS_CUSTOMER {
        f.uuid("customerId")
    } else {
        None
    };
    let created_from = f.datetime("createdFrom");
    let created_to = f.datetime("createdTo");
    let overdue = if E::NAME == "invoice" {
        f.boolean("overdue")
    } else {
        None
    };
    f.finish()?;
    Ok(ListQuery {
        page,
        size,
        sort_column,
        descending,
        status,
        customer_id,
        created_from,
        created_to,
        overdue,
    })
}

/// Lists tolerate replica lag: they are served by the read pool (HAProxy read port).
pub async fn list<E: Entity>(
    State(st): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Json<Page<E>>> {
    let q = parse_list_query::<E>(&q)?;
    let pool = if strong(&headers) {
        &st.write
    } else {
        &st.read
    };
    Ok(Json(store::list::<E>(pool, &q).await?))
}

/// A customer's orders, invoices, … : a hot list, cached and invalidated with the customer.
pub async fn customer_list<E: Entity>(
    State(st): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Page<E>>> {
    let cid = path_id(&id)?;
    let mut q = parse_list_query::<E>(&q)?;
    q.customer_id = Some(cid);
    if load_cached::<Customer>(&st, cid).await?.is_none() {
        return Err(store::not_found::<Customer>(cid));
    }
    let key = cache::customer_list_key(cid, E::PLURAL, &q.cache_suffix());
    if st.cache.admission("customer_list", &key) == cache::Admission::Skip {
        // Not cached (the policy found these lists invalidated faster than they are read, or
        // the cache is down): lists tolerate replica lag, so the read pool serves them.
        st.cache.note("customer_list", "bypass");
        return Ok(Json(store::list::<E>(&st.read, &q).await?));
    }
    let pool = st.write.clone();
    let page = st
        .cache
        .get_or_load::<Page<E>, _, _>(
            "customer_list",
            key,
            vec![cache::customer_gen(cid)],
            move || async move { store::list::<E>(&pool, &q).await.map(Some) },
        )
        .await?;
    page.map(Json)
        .ok_or_else(|| store::not_found::<Customer>(cid))
}

/// Body of `POST /{id}/status`.
pub struct StatusChange<S> {
    pub to: S,
    pub version: i64,
    pub reason: Option<String>,
}

pub fn parse_status_change<S: Lifecycle>(
    headers: &HeaderMap,
    body: &Bytes,
    allowed: &str,
) -> ApiResult<StatusChange<S>> {
    let obj = input::json_object(headers, body)?;
    let mut f = Fields::new(&obj);
    let to = f.enumeration("status", true, S::parse_str, allowed);
    let version = f.int("version", true, 1, i64::MAX);
    let reason = f.string("reason", false, 500);
    f.into_result()?;
    match (to, version) {
        (Some(to), Some(version)) => Ok(StatusChange {
            to,
            version,
            reason,
        }),
        _ => Err(AppError::field("body", "status and version are required")),
    }
}

/// The checks of a status change of `cur`, in the order their errors take precedence; returns
/// the status it changes from.
fn decide_status<E: Entity>(
    cur: &E,
    req: &StatusChange<E::Status>,
    to: &str,
) -> ApiResult<E::Status> {
    store::check_version(cur, req.version)?;
    let from = E::Status::parse_str(cur.status())
        .ok_or_else(|| AppError::internal(format!("unknown stored status {}", cur.status())))?;
    crate::domain::check_transition(E::NAME, from, req.to)?;
    resources::before_status(E::NAME, to, req.reason.as_deref())?;
    Ok(from)
}

pub async fn change_status<E: Entity>(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<E>> {
    let id = path_id(&id)?;
    let allowed: Vec<String> = E::Status::ALL.iter().map(|s| s.to_string()).collect();
    let req = parse_status_change::<E::Status>(&headers, &body, &allowed.join(", "))?;
    let to = req.to.to_string();
    // Decide on the row as this process last wrote it, if it is remembered (no round trip
    // before the statement), guarded by its version and `xmin`: the statement writes only if
    // the row is still exactly that. Otherwise (nothing remembered, a check or the guard does
    // not hold) read, decide, then one guarded statement (`WHERE version = $n`); if the guard
    // does not hold, someone changed the row in between: read and decide again. The errors are
    // always those of a read. At most three reads.
    // Where the recent writes stood when `cur` was looked up or read (see `Write::based_on`).
    let mut epoch = st.cache.recent_epoch();
    let mut known = st
        .cache
        .recent(E::NAME, id)
        .and_then(|(x, v)| serde_json::from_value::<E>(v).ok().map(|e| (e, x)));
    let mut reads = 0;
    loop {
        let (cur, xmin) = match known.take() {
            Some((e, x)) => (e, Some(x)),
            None if reads == 3 => break,
            None => {
                reads += 1;
                epoch = st.cache.recent_epoch();
                let cur = store::fetch_pool::<E>(&st.write, id)
                    .await?
                    .ok_or_else(|| store::not_found::<E>(id))?;
                (cur, None)
            }
        };
        let from = match decide_status(&cur, &req, &to) {
            Ok(from) => from,
            // What was remembered may be stale: read before answering.
            Err(_) if xmin.is_some() => continue,
            Err(e) => return Err(e),
        };
        let now = write::now();
        let mut w = write::Write::new();
        w.based_on(epoch);
        let mut v = serde_json::to_value(&cur).map_err(AppError::internal)?;
        v["status"] = serde_json::json!(to);
        v["version"] = serde_json::json!(cur.version() + 1);
        v["updatedAt"] = serde_json::json!(now);
        let sets = resources::status_sets(&mut w, E::NAME, &to, req.reason.as_deref(), now, &mut v);
        let mut changes = Vec::new();
        // A completed payment of a whole invoice marks the invoice PAID, in the same statement.
        let mut paid: Option<Invoice> = None;
        // Whether the invoice is to be marked PAID was decided on a remembered invoice that
        // stays as it is: the payment's update must find it unchanged too.
        let mut unpaid_guard = String::new();
        if E::NAME == "payment" && to == "COMPLETED" {
            let invoice_id = v["invoiceId"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok());
            if let Some(iid) = invoice_id {
                // The remembered invoice only on the remembered payment's path (a read of the
                // payment reads the invoice too, as before).
                let remembered = xmin
                    .as_ref()
                    .and_then(|_| st.cache.recent("invoice", iid))
                    .and_then(|(x, v)| serde_json::from_value::<Invoice>(v).ok().map(|i| (i, x)));
                let (inv, inv_xmin) = match remembered {
                    Some((i, x)) => (i, Some(x)),
                    None => (
                        store::fetch_pool::<Invoice>(&st.write, iid)
                            .await?
                            .ok_or_else(|| store::not_found::<Invoice>(iid))?,
                        None,
                    ),
                };
                if resources::pays_invoice(&v, &inv) {
                    let mut iv = serde_json::to_value(&inv).map_err(AppError::internal)?;
                    iv["status"] = serde_json::json!("PAID");
                    iv["version"] = serde_json::json!(inv.version + 1);
                    iv["updatedAt"] = serde_json::json!(now);
                    let isets =
                        resources::status_sets(&mut w, "invoice", "PAID", None, now, &mut iv);
                    let sql = format!(
                        "UPDATE invoices SET status = 'PAID', version = version + 1, updated_at = {}{isets} \
                         WHERE id = {} AND version = {}{} RETURNING id",
                        w.bind(now),
                        w.bind(iid),
                        w.bind(inv.version),
                        w.xmin_guard(inv_xmin.as_deref()),
                    );
                    w.cte("inv", sql, true);
                    let new_inv: Invoice =
                        serde_json::from_value(iv).map_err(AppError::internal)?;
                    w.event(
                        &st,
                        "inv",
                        &new_inv,
                        &resources::event_of(&new_inv, "paid", Some(inv.status.clone())),
                    );
                    w.remember(&new_inv);
                    changes.push(write::change_of(&new_inv));
                    paid = Some(new_inv);
                } else if let Some(x) = inv_xmin.as_deref() {
                    unpaid_guard = format!(
                        " AND EXISTS (SELECT 1 FROM invoices WHERE id = {}{})",
                        w.bind(iid),
                        w.xmin_guard(Some(x)),
                    );
                }
            }
        }
        let guard = if paid.is_some() {
            " AND EXISTS (SELECT 1 FROM inv)"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {} SET status = {}, version = version + 1, updated_at = {}{sets} \
             WHERE id = {} AND version = {}{}{guard}{unpaid_guard} RETURNING id",
            E::PLURAL,
            w.bind(to.clone()),
            w.bind(now),
            w.bind(id),
            w.bind(cur.version()),
            w.xmin_guard(xmin.as_deref()),
        );
        w.cte("e", sql, true);
        let new: E = serde_json::from_value(v).map_err(AppError::internal)?;
        w.event(
            &st,
            "e",
            &new,
            &resources::event_of(&new, &to.to_lowercase(), Some(from.to_string())),
        );
        w.remember(&new);
        changes.push(write::change_of(&new));
        let counts = w.run(&st, changes).await?;
        if counts.iter().all(|c| *c > 0) {
            count_status(&st, E::NAME, &new);
            if paid.is_some() {
                st.metrics.invoices_total.with_label_values(&["PAID"]).inc();
            }
            return Ok(Json(new));
        }
    }
    Err(AppError::Conflict(format!(
        "{} {id} kept changing while its status was written; retry",
        E::NAME
    )))
}

pub async fn delete<E: Entity>(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = path_id(&id)?;
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<E>(&mut tx, id).await?;
    resources::check_deletable::<E>(&cur)?;
    sqlx::query(&format!("DELETE FROM {} WHERE id = $1", E::PLURAL))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| match AppError::from(e) {
            AppError::Conflict(_) => {
                AppError::Conflict(format!("{} {id} is still referenced", E::NAME))
            }
            other => other,
        })?;
    emit(&st, &mut tx, &cur, "deleted", None).await?;
    write::commit(&st, tx, vec![write::change_of(&cur)]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes the CloudEvent of a change into the outbox, inside the caller's transaction.
pub async fn emit<E: Entity>(
    st: &AppState,
    tx: &mut sqlx::PgConnection,
    entity: &E,
    action: &str,
    previous_status: Option<String>,
) -> ApiResult<()> {
    let data = serde_json::to_value(entity).map_err(AppError::internal)?;
    let ev = CloudEvent::new(
        E::NAME,
        entity.id(),
        action,
        data,
        Some(entity.version()),
        previous_status,
    );
    events::record(tx, &st.topic(E::NAME), entity.id(), &ev).await?;
    Ok(())
}

/// Business counters: an entity entering a status.
pub fn count_status<E: Entity>(st: &AppState, name: &str, e: &E) {
    match name {
        "order" => st
            .metrics
            .orders_total
            .with_label_values(&[e.status()])
            .inc(),
        "invoice" => st
            .metrics
            .invoices_total
            .with_label_values(&[e.status()])
            .inc(),
        "payment" => {
            // Only a payment has a method; the downcast avoids serialising every entity.
            let method = (e as &dyn std::any::Any)
                .downcast_ref::<Payment>()
                .map_or("UNKNOWN", |p| p.method.as_str());
            st.metrics
                .payments_total
                .with_label_values(&[e.status(), method])
                .inc()
        }
        _ => {}
    }
}
