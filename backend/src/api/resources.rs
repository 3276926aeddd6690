//! Create and update handlers of each resource, and the per-resource parts of status changes
//! and deletes (side effects such as a completed payment marking its invoice PAID).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use std::collections::BTreeMap;
use uuid::Uuid;

use super::input::{json_object, path_id, Fields};
use super::write::{self, Write};
use super::{count_status, emit, Shared};
use crate::domain::{self, *};
use crate::error::{ApiResult, AppError, FieldError};
use crate::events::CloudEvent;
use crate::model::*;
use crate::store;

const MAX_MONEY: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

fn created<E: Entity>(e: E) -> Response {
    let loc = format!("/api/v1/{}/{}", E::PLURAL, e.id());
    (StatusCode::CREATED, [(header::LOCATION, loc)], Json(e)).into_response()
}

fn money(f: &mut Fields<'_>, name: &str, required: bool) -> Option<Decimal> {
    f.decimal(name, required, Decimal::ZERO, MAX_MONEY, false, 2)
}

fn currency(f: &mut Fields<'_>, name: &str, required: bool) -> Option<String> {
    let c = f.string(name, required, 3)?;
    if !domain::valid_currency(&c) {
        f.error(name, "must be an ISO 4217 currency code such as EUR");
        return None;
    }
    Some(c)
}

fn broken(field: &str, msg: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: msg.into(),
    }
}

async fn fetch_or_broken<E: Entity>(
    tx: &mut PgConnection,
    id: Uuid,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> ApiResult<Option<E>> {
    let got = store::fetch::<E>(tx, id).await?;
    if got.is_none() {
        errs.push(broken(field, format!("{} {id} does not exist", E::NAME)));
    }
    Ok(got)
}

fn refs_ok(errs: Vec<FieldError>) -> ApiResult<()> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(AppError::BrokenReference(errs))
    }
}

/// Money as stored: NUMERIC(19,2), always two decimal places.
pub fn money_scale(d: Decimal) -> Decimal {
    let mut d = d.round_dp(2);
    d.rescale(2);
    d
}

/// Tax rates as stored: NUMERIC(7,4).
pub fn rate_scale(d: Decimal) -> Decimal {
    let mut d = d.round_dp(4);
    d.rescale(4);
    d
}

/// The CloudEvent of a change of `e`.
pub fn event_of<E: Entity>(e: &E, action: &str, previous_status: Option<String>) -> CloudEvent {
    let data = serde_json::to_value(e).unwrap_or(Value::Null);
    CloudEvent::new(
        E::NAME,
        e.id(),
        action,
        data,
        Some(e.version()),
        previous_status,
    )
}

/// What an order needs to know about a product it refers to.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProductRef {
    id: Uuid,
    status: String,
    price: Decimal,
    currency: String,
}

/// The products' order-relevant fields (status, price, currency) as last read, so that a new
/// order can be priced without a round trip first. Never trusted: the order's statement writes
/// only if every product still has exactly these values, otherwise the handler reads them and
/// decides again (and refreshes them here). Bounded: cleared when it holds
/// `MAX_PRODUCT_REFS` products.
#[derive(Default)]
pub struct ProductRefs(std::sync::Mutex<std::collections::HashMap<Uuid, ProductRef>>);

const MAX_PRODUCT_REFS: usize = 10_000;

impl ProductRefs {
    /// The refs of all `ids`, or None if one is not known.
    fn get_all(&self, ids: &[Uuid]) -> Option<Vec<ProductRef>> {
        let map = self.0.lock().ok()?;
        ids.iter().map(|id| map.get(id).cloned()).collect()
    }

    /// Remembers `refs` as just read.
    fn remember(&self, refs: &[ProductRef]) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() + refs.len() > MAX_PRODUCT_REFS {
                map.clear();
            }
            for r in refs {
                map.insert(r.id, r.clone());
            }
        }
    }
}

/// Prices order items against their products (unit price given, else the product's price in
/// the order's currency); problems go to `errs`.
fn price_items(
    items: &[ItemInput],
    products: &[ProductRef],
    currency: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let field = format!("items[{i}].productId");
        let Some(p) = products.iter().find(|p| p.id == it.product_id) else {
            errs.push(broken(
                &field,
                format!("product {} does not exist", it.product_id),
            ));
            continue;
        };
        if p.status == "DISCONTINUED" {
            errs.push(broken(&field, "product is DISCONTINUED"));
            continue;
        }
        let unit_price = match it.unit_price {
            Some(u) => u,
            None if p.currency.trim() == currency => p.price,
            None => {
                errs.push(broken(
                    &format!("items[{i}].unitPrice"),
                    format!(
                        "product is priced in {}, give a unit price in {currency}",
                        p.currency.trim()
                    ),
                ));
                continue;
            }
        };
        lines.push(Line {
            quantity: it.quantity,
            unit_price,
            tax_rate: it.tax_rate,
        });
    }
    lines
}

// ---------------------------------------------------------------- customers

struct CustomerInput {
    first_name: String,
    last_name: String,
    email: String,
    phone: Option<String>,
    national_id: Option<String>,
}

fn customer_input(obj: &Map<String, Value>, with_version: bool) -> ApiResult<(CustomerInput, i64)> {
    let mut f = Fields::new(obj);
    let first_name = f.string("firstName", true, 100);
    let last_name = f.string("lastName", true, 100);
    let email = f.string("email", true, 254).map(|e| e.to_lowercase());
    if let Some(e) = &email {
        if !domain::valid_email(e) {
            f.error("email", "must be an e-mail address");
        }
    }
    let phone = f.string("phone", false, 20);
    if let Some(p) = &phone {
        if !domain::valid_phone(p) {
            f.error(
                "phone",
                "must be a phone number (digits, spaces, dashes, optional leading +)",
            );
        }
    }
    let national_id = f.string("nationalId", false, 32);
    if let Some(n) = &national_id {
        if !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            f.error("nationalId", "must contain only letters, digits and dashes");
        }
    }
    let version = if with_version {
        f.int("version", true, 1, i64::MAX)
    } else {
        Some(0)
    };
    f.into_result()?;
    match (first_name, last_name, email, version) {
        (Some(first_name), Some(last_name), Some(email), Some(version)) => Ok((
            CustomerInput {
                first_name,
                last_name,
                email,
                phone,
                national_id,
            },
            version,
        )),
        _ => Err(AppError::field("body", "incomplete")),
    }
}

pub async fn create_customer(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let (c, _) = customer_input(&obj, false)?;
    let now = write::now();
    let e = Customer {
        id: Uuid::new_v4(),
        first_name: c.first_name,
        last_name: c.last_name,
        email: c.email,
        phone: c.phone,
        national_id: c.national_id,
        status: CustomerStatus::Active.to_string(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let mut w = Write::new();
    let t = w.bind(now);
    let sql = format!(
        "INSERT INTO customers (id, first_name, last_name, email, phone, national_id, status, \
         created_at, updated_at, version) VALUES ({}, {}, {}, {}, {}, {}, {}, {t}, {t}, 1) RETURNING id",
        w.bind(e.id),
        w.bind(e.first_name.clone()),
        w.bind(e.last_name.clone()),
        w.bind(e.email.clone()),
        w.bind(e.phone.clone()),
        w.bind(e.national_id.clone()),
        w.bind(e.status.clone()),
    );
    w.cte("e", sql, true);
    w.event(&st, "e", &e, &event_of(&e, "created", None));
    w.remember(&e);
    w.run(&st, vec![write::change_of(&e)]).await?;
    Ok(created(e))
}

pub async fn update_customer(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Customer>> {
    let id = path_id(&id)?;
    let obj = json_object(&headers, &body)?;
    let (c, version) = customer_input(&obj, true)?;
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<Customer>(&mut tx, id).await?;
    store::check_version(&cur, version)?;
    if let Some(s) = CustomerStatus::parse(&cur.status) {
        domain::customer_editable(s)?;
    }
    sqlx::query(
        "UPDATE customers SET first_name=$1, last_name=$2, email=$3, phone=$4, national_id=$5, \
         version=version+1, updated_at=now() WHERE id=$6",
    )
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(&c.email)
    .bind(&c.phone)
    .bind(&c.national_id)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Customer>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Customer>(id))?;
    emit(&st, &mut tx, &e, "updated", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(Json(e))
}

// ---------------------------------------------------------------- products

struct ProductInput {
    code: Option<String>,
    name: String,
    description: Option<String>,
    product_type: ProductType,
    category: ProductCategory,
    price: Decimal,
    currency: String,
    billing_period: BillingPeriod,
    features: BTreeMap<String, String>,
}

fn product_input(obj: &Map<String, Value>, update: bool) -> ApiResult<(ProductInput, i64)> {
    let mut f = Fields::new(obj);
    let code = if update {
        None
    } else {
        let c = f.string("code", true, 50);
        if let Some(c) = &c {
            if !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                f.error("code", "must contain only letters, digits, '-' and '_'");
            }
        }
        c
    };
    let name = f.string("name", true, 200);
    let description = f.string("description", false, 2000);
    let product_type = f.one_of::<ProductType>("productType", true);
    let category = f.one_of::<ProductCategory>("category", true);
    let price = money(&mut f, "price", true);
    let currency = currency(&mut f, "currency", true);
    let billing_period = f.one_of::<BillingPeriod>("billingPeriod", true);
    let mut features = BTreeMap::new();
    if let Some(obj) = f.object("features") {
        if obj.len() > 50 {
            f.error("features", "must have at most 50 entries");
        }
        for (k, v) in obj {
            match v.as_str() {
                Some(s) if k.chars().count() <= 64 && s.chars().count() <= 256 && !k.is_empty() => {
                    features.insert(k.clone(), s.to_string());
                }
                _ => f.error(
                    &format!("features.{k}"),
                    "keys (1-64 chars) must map to strings of at most 256 chars",
                ),
            }
        }
    }
    let version = if update {
        f.int("version", true, 1, i64::MAX)
    } else {
        Some(0)
    };
    f.into_result()?;
    match (
        name,
        product_type,
        category,
        price,
        currency,
        billing_period,
        version,
    ) {
        (
            Some(name),
            Some(product_type),
            Some(category),
            Some(price),
            Some(currency),
            Some(billing_period),
            Some(version),
        ) => Ok((
            ProductInput {
                code,
                name,
                description,
                product_type,
                category,
                price,
                currency,
                billing_period,
                features,
            },
            version,
        )),
        _ => Err(AppError::field("body", "incomplete")),
    }
}

pub async fn create_product(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let (p, _) = product_input(&obj, false)?;
    let Some(code) = p.code else {
        return Err(AppError::field("code", "is required"));
    };
    let now = write::now();
    let e = Product {
        id: Uuid::new_v4(),
        code,
        name: p.name,
        description: p.description,
        product_type: p.product_type.as_str().to_string(),
        category: p.category.as_str().to_string(),
        price: money_scale(p.price),
        currency: p.currency,
        billing_period: p.billing_period.as_str().to_string(),
        features: p.features,
        status: ProductStatus::Active.to_string(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let mut w = Write::new();
    let t = w.bind(now);
    let sql = format!(
        "INSERT INTO products (id, code, name, description, product_type, category, price, currency, \
         billing_period, features, status, created_at, updated_at, version) \
         VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {t}, {t}, 1) RETURNING id",
        w.bind(e.id),
        w.bind(e.code.clone()),
        w.bind(e.name.clone()),
        w.bind(e.description.clone()),
        w.bind(e.product_type.clone()),
        w.bind(e.category.clone()),
        w.bind(e.price),
        w.bind(e.currency.clone()),
        w.bind(e.billing_period.clone()),
        w.bind(sqlx::types::Json(e.features.clone())),
        w.bind(e.status.clone()),
    );
    w.cte("e", sql, true);
    w.event(&st, "e", &e, &event_of(&e, "created", None));
    w.remember(&e);
    w.run(&st, vec![write::change_of(&e)]).await?;
    Ok(created(e))
}

pub async fn update_product(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Product>> {
    let id = path_id(&id)?;
    let obj = json_object(&headers, &body)?;
    let (p, version) = product_input(&obj, true)?;
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<Product>(&mut tx, id).await?;
    store::check_version(&cur, version)?;
    if let Some(s) = ProductStatus::parse(&cur.status) {
        if s.is_final() {
            return Err(RuleViolation::ReadOnly {
                entity: "product",
                status: s.to_string(),
            }
            .into());
        }
    }
    sqlx::query(
        "UPDATE products SET name=$1, description=$2, product_type=$3, category=$4, price=$5, \
         currency=$6, billing_period=$7, features=$8, version=version+1, updated_at=now() WHERE id=$9",
    )
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.product_type.as_str())
    .bind(p.category.as_str())
    .bind(p.price)
    .bind(&p.currency)
    .bind(p.billing_period.as_str())
    .bind(sqlx::types::Json(&p.features))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Product>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Product>(id))?;
    emit(&st, &mut tx, &e, "updated", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(Json(e))
}

// ---------------------------------------------------------------- orders

struct ItemInput {
    product_id: Uuid,
    quantity: i32,
    unit_price: Option<Decimal>,
    tax_rate: Decimal,
}

fn items_input(f: &mut Fields<'_>) -> Option<Vec<ItemInput>> {
    let arr = f.array("items", true)?;
    if arr.is_empty() || arr.len() > 100 {
        f.error("items", "must have between 1 and 100 items");
        return None;
    }
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, v) in arr.iter().enumerate() {
        let Some(o) = v.as_object() else {
            errs.push(broken(&format!("items[{i}]"), "must be an object"));
            continue;
        };
        let mut g = Fields::nested(o, format!("items[{i}]."));
        let product_id = g.uuid("productId", true);
        let quantity = g.int("quantity", true, 1, 10_000);
        let unit_price = money(&mut g, "unitPrice", false);
        let tax_rate = g.decimal("taxRate", false, Decimal::ZERO, Decimal::ONE, false, 4);
        match g.finish() {
            Err(e) => errs.extend(e),
            Ok(()) => {
                if let (Some(product_id), Some(q)) = (product_id, quantity) {
                    out.push(ItemInput {
                        product_id,
                        quantity: q as i32,
                        unit_price,
                        tax_rate: tax_rate.unwrap_or(Decimal::ZERO),
                    })
                }
            }
        }
    }
    if !errs.is_empty() {
        f.extend(errs);
        return None;
    }
    Some(out)
}

/// Resolves prices against the products, computes totals and writes the items.
async fn write_order_items(
    tx: &mut PgConnection,
    order_id: Uuid,
    currency: &str,
    items: &[ItemInput],
) -> ApiResult<Totals> {
    let mut errs = Vec::new();
    let mut lines = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let field = format!("items[{i}].productId");
        let Some(p) = fetch_or_broken::<Product>(tx, it.product_id, &field, &mut errs).await?
        else {
            continue;
        };
        if p.status == "DISCONTINUED" {
            errs.push(broken(&field, "product is DISCONTINUED"));
            continue;
        }
        let unit_price = match it.unit_price {
            Some(u) => u,
            None if p.currency.trim() == currency => p.price,
            None => {
                errs.push(broken(
                    &format!("items[{i}].unitPrice"),
                    format!(
                        "product is priced in {}, give a unit price in {currency}",
                        p.currency
                    ),
                ));
                continue;
            }
        };
        lines.push(Line {
            quantity: it.quantity,
            unit_price,
            tax_rate: it.tax_rate,
        });
    }
    refs_ok(errs)?;
    sqlx::query("DELETE FROM order_items WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    for (i, (it, l)) in items.iter().zip(&lines).enumerate() {
        sqlx::query(
            "INSERT INTO order_items (id, order_id, line_no, product_id, quantity, unit_price, tax_rate, line_total) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(Uuid::new_v4())
        .bind(order_id)
        .bind(i as i32)
        .bind(it.product_id)
        .bind(l.quantity)
        .bind(l.unit_price)
        .bind(l.tax_rate)
        .bind(line_total(l))
        .execute(&mut *tx)
        .await?;
    }
    Ok(totals(&lines))
}

pub async fn create_order(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let customer_id = f.uuid("customerId", true);
    let order_type = f
        .one_of::<OrderType>("orderType", false)
        .unwrap_or(OrderType::New);
    let priority = f
        .one_of::<OrderPriority>("priority", false)
        .unwrap_or(OrderPriority::Normal);
    let currency = currency(&mut f, "currency", true);
    let notes = f.string("notes", false, 2000);
    let items = items_input(&mut f);
    f.into_result()?;
    let (Some(customer_id), Some(currency), Some(items)) = (customer_id, currency, items) else {
        return Err(AppError::field("body", "incomplete"));
    };
    let id = Uuid::new_v4();
    // The distinct products, in the order of the items.
    let mut ids: Vec<Uuid> = Vec::with_capacity(items.len());
    for it in &items {
        if !ids.contains(&it.product_id) {
            ids.push(it.product_id);
        }
    }
    // Price against the products as last read (no round trip) when every one is known; the
    // statement's guard writes only if the customer is ACTIVE and every product still has
    // exactly the status, price and currency priced against. If the guard does not hold (or a
    // known product cannot be ordered), read the references, check them here, and write again:
    // the errors are those of a read, as before. At most three reads.
    let mut known = st.product_refs.get_all(&ids);
    let mut reads = 0;
    loop {
        let (read, products) = match known.take() {
            Some(p) => (false, p),
            None if reads == 3 => break,
            None => {
                reads += 1;
                let (customer_status, products): (
                    Option<String>,
                    sqlx::types::Json<Vec<ProductRef>>,
                ) = sqlx::query_as(
                    "SELECT (SELECT status FROM customers WHERE id = $1), \
                     COALESCE((SELECT jsonb_agg(jsonb_build_object('id', id, 'status', status, \
                     'price', price::text, 'currency', currency)) FROM products WHERE id = ANY($2)), '[]'::jsonb)",
                )
                .bind(customer_id)
                .bind(&ids)
                .fetch_one(&st.write)
                .await?;
                st.product_refs.remember(&products.0);
                let mut errs = Vec::new();
                match &customer_status {
                    None => errs.push(broken(
                        "customerId",
                        format!("customer {customer_id} does not exist"),
                    )),
                    Some(s) if s != "ACTIVE" => errs.push(broken(
                        "customerId",
                        format!("customer is {s}, orders need an ACTIVE customer"),
                    )),
                    Some(_) => {}
                }
                // The customer is checked before the items (one problem at a time, as before).
                refs_ok(errs)?;
                (true, products.0)
            }
        };
        let mut errs = Vec::new();
        let lines = price_items(&items, &products, &currency, &mut errs);
        if !errs.is_empty() {
            if read {
                return Err(AppError::BrokenReference(errs));
            }
            continue; // what was known may be stale: read before answering 422
        }
        // Every id has a ref here (price_items reported any missing one).
        let refs: Vec<&ProductRef> = ids
            .iter()
            .filter_map(|pid| products.iter().find(|p| p.id == *pid))
            .collect();
        let now = write::now();
        let t = totals(&lines);
        let order_items: Vec<OrderItem> = items
            .iter()
            .zip(&lines)
            .map(|(it, l)| OrderItem {
                id: Uuid::new_v4(),
                product_id: it.product_id,
                quantity: l.quantity,
                unit_price: money_scale(l.unit_price),
                tax_rate: rate_scale(l.tax_rate),
                line_total: money_scale(line_total(l)),
            })
            .collect();
        let e = Order {
            id,
            order_number: store::new_number("ORD"),
            customer_id,
            order_type: order_type.as_str().to_string(),
            priority: priority.as_str().to_string(),
            status: OrderStatus::Pending.to_string(),
            currency: currency.clone(),
            subtotal: money_scale(t.subtotal),
            tax_amount: money_scale(t.tax),
            total_amount: money_scale(t.total),
            notes: notes.clone(),
            items: order_items,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let mut w = Write::new();
        let tm = w.bind(now);
        let cust = w.bind(customer_id);
        let sql = format!(
            "INSERT INTO orders (id, order_number, customer_id, order_type, priority, status, currency, \
             subtotal, tax_amount, total_amount, notes, created_at, updated_at, version) \
             SELECT {}, {}, {cust}, {}, {}, {}, {}, {}, {}, {}, {}, {tm}, {tm}, 1 \
             WHERE EXISTS (SELECT 1 FROM customers WHERE id = {cust} AND status = 'ACTIVE') \
             AND (SELECT count(*) FROM unnest({}::uuid[], {}::text[], {}::numeric[], {}::text[]) \
             AS r(id, status, price, currency) JOIN products p ON p.id = r.id AND p.status = r.status \
             AND p.price = r.price AND p.currency::text = r.currency) = {} \
             RETURNING id",
            w.bind(e.id),
            w.bind(e.order_number.clone()),
            w.bind(e.order_type.clone()),
            w.bind(e.priority.clone()),
            w.bind(e.status.clone()),
            w.bind(e.currency.clone()),
            w.bind(e.subtotal),
            w.bind(e.tax_amount),
            w.bind(e.total_amount),
            w.bind(e.notes.clone()),
            w.bind(refs.iter().map(|p| p.id).collect::<Vec<_>>()),
            w.bind(refs.iter().map(|p| p.status.clone()).collect::<Vec<_>>()),
            w.bind(refs.iter().map(|p| p.price).collect::<Vec<_>>()),
            w.bind(
                refs.iter()
                    .map(|p| p.currency.trim().to_string())
                    .collect::<Vec<_>>(),
            ),
            w.bind(refs.len() as i64),
        );
        w.cte("e", sql, true);
        let items_sql = format!(
            "INSERT INTO order_items (id, order_id, line_no, product_id, quantity, unit_price, tax_rate, line_total) \
             SELECT u.id, e.id, u.n - 1, u.product_id, u.quantity, u.unit_price, u.tax_rate, u.line_total \
             FROM e, unnest({}::uuid[], {}::uuid[], {}::int4[], {}::numeric[], {}::numeric[], {}::numeric[]) \
             WITH ORDINALITY AS u(id, product_id, quantity, unit_price, tax_rate, line_total, n)",
            w.bind(e.items.iter().map(|i| i.id).collect::<Vec<_>>()),
            w.bind(e.items.iter().map(|i| i.product_id).collect::<Vec<_>>()),
            w.bind(e.items.iter().map(|i| i.quantity).collect::<Vec<_>>()),
            w.bind(e.items.iter().map(|i| i.unit_price).collect::<Vec<_>>()),
            w.bind(e.items.iter().map(|i| i.tax_rate).collect::<Vec<_>>()),
            w.bind(e.items.iter().map(|i| i.line_total).collect::<Vec<_>>()),
        );
        w.cte("i", items_sql, false);
        w.event(&st, "e", &e, &event_of(&e, "created", None));
        w.remember(&e);
        let counts = w.run(&st, vec![write::change_of(&e)]).await?;
        if counts.first().copied().unwrap_or(0) > 0 {
            count_status(&st, "order", &e);
            return Ok(created(e));
        }
        // The guard did not hold: a reference is not (or no longer) as priced against.
    }
    Err(AppError::Conflict(
        "the customer or a product kept changing while the order was written; retry".into(),
    ))
}

pub async fn update_order(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Order>> {
    let id = path_id(&id)?;
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let priority = f.one_of::<OrderPriority>("priority", true);
    let notes = f.string("notes", false, 2000);
    let items = items_input(&mut f);
    let version = f.int("version", true, 1, i64::MAX);
    f.into_result()?;
    let (Some(priority), Some(items), Some(version)) = (priority, items, version) else {
        return Err(AppError::field("body", "incomplete"));
    };
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<Order>(&mut tx, id).await?;
    store::check_version(&cur, version)?;
    if let Some(s) = OrderStatus::parse(&cur.status) {
        domain::order_editable(s)?;
    }
    let t = write_order_items(&mut tx, id, cur.currency.trim(), &items).await?;
    sqlx::query(
        "UPDATE orders SET priority=$1, notes=$2, subtotal=$3, tax_amount=$4, total_amount=$5, \
         version=version+1, updated_at=now() WHERE id=$6",
    )
    .bind(priority.as_str())
    .bind(&notes)
    .bind(t.subtotal)
    .bind(t.tax)
    .bind(t.total)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Order>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Order>(id))?;
    emit(&st, &mut tx, &e, "updated", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(Json(e))
}

// ---------------------------------------------------------------- subscriptions

pub async fn create_subscription(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let customer_id = f.uuid("customerId", true);
    let product_id = f.uuid("productId", true);
    let order_id = f.uuid("orderId", false);
    let start = f.date("startDate", false);
    let end = f.date("endDate", false);
    let next = f.date("nextBillingDate", false);
    let price = money(&mut f, "price", false);
    let discount = money(&mut f, "discount", false);
    let currency_in = currency(&mut f, "currency", false);
    let auto_renew = f.boolean("autoRenew", false).unwrap_or(true);
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            f.error("endDate", "must not be before startDate");
        }
    }
    if let (Some(p), Some(d)) = (price, discount) {
        if d > p {
            f.error("discount", "must not exceed price");
        }
    }
    f.into_result()?;
    let (Some(customer_id), Some(product_id)) = (customer_id, product_id) else {
        return Err(AppError::field("body", "incomplete"));
    };
    let mut tx = st.write.begin().await?;
    let mut errs = Vec::new();
    let customer =
        fetch_or_broken::<Customer>(&mut tx, customer_id, "customerId", &mut errs).await?;
    if let Some(c) = &customer {
        if c.status != "ACTIVE" {
            errs.push(broken("customerId", format!("customer is {}", c.status)));
        }
    }
    let product = fetch_or_broken::<Product>(&mut tx, product_id, "productId", &mut errs).await?;
    if let Some(oid) = order_id {
        if let Some(o) = fetch_or_broken::<Order>(&mut tx, oid, "orderId", &mut errs).await? {
            if o.customer_id != customer_id {
                errs.push(broken("orderId", "order belongs to another customer"));
            }
        }
    }
    refs_ok(errs)?;
    let Some(product) = product else {
        return Err(AppError::internal("product vanished"));
    };
    let price = price.unwrap_or(product.price);
    let discount = discount.unwrap_or(Decimal::ZERO);
    if discount > price {
        return Err(AppError::field("discount", "must not exceed price"));
    }
    let currency = currency_in.unwrap_or_else(|| product.currency.trim().to_string());
    let period = BillingPeriod::parse(&product.billing_period).unwrap_or(BillingPeriod::Monthly);
    let start = start.unwrap_or_else(|| Utc::now().date_naive());
    let next = next.unwrap_or_else(|| domain::next_billing_date(start, period));
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO subscriptions (id, subscription_number, customer_id, product_id, order_id, status, \
         start_date, end_date, next_billing_date, price, discount, currency, auto_renew) \
         VALUES ($1,$2,$3,$4,$5,'ACTIVE',$6,$7,$8,$9,$10,$11,$12)",
    )
    .bind(id)
    .bind(store::new_number("SUB"))
    .bind(customer_id)
    .bind(product_id)
    .bind(order_id)
    .bind(start)
    .bind(end)
    .bind(next)
    .bind(price)
    .bind(discount)
    .bind(&currency)
    .bind(auto_renew)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Subscription>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Subscription>(id))?;
    emit(&st, &mut tx, &e, "created", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(created(e))
}

pub async fn update_subscription(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Subscription>> {
    let id = path_id(&id)?;
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let auto_renew = f.boolean("autoRenew", true);
    let discount = money(&mut f, "discount", true);
    let end = f.date("endDate", false);
    let version = f.int("version", true, 1, i64::MAX);
    f.into_result()?;
    let (Some(auto_renew), Some(discount), Some(version)) = (auto_renew, discount, version) else {
        return Err(AppError::field("body", "incomplete"));
    };
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<Subscription>(&mut tx, id).await?;
    store::check_version(&cur, version)?;
    if let Some(s) = SubscriptionStatus::parse(&cur.status) {
        domain::subscription_editable(s)?;
    }
    let mut errs = Vec::new();
    if discount > cur.price {
        errs.push(broken("discount", "must not exceed price"));
    }
    if end.is_some_and(|e| e < cur.start_date) {
        errs.push(broken("endDate", "must not be before startDate"));
    }
    if !errs.is_empty() {
        return Err(AppError::Validation(errs));
    }
    sqlx::query(
        "UPDATE subscriptions SET auto_renew=$1, discount=$2, end_date=$3, version=version+1, \
         updated_at=now() WHERE id=$4",
    )
    .bind(auto_renew)
    .bind(discount)
    .bind(end)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Subscription>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Subscription>(id))?;
    emit(&st, &mut tx, &e, "updated", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(Json(e))
}

pub async fn renew_subscription(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Subscription>> {
    let id = path_id(&id)?;
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let version = f.int("version", true, 1, i64::MAX);
    f.into_result()?;
    let Some(version) = version else {
        return Err(AppError::field("version", "is required"));
    };
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<Subscription>(&mut tx, id).await?;
    store::check_version(&cur, version)?;
    let status = SubscriptionStatus::parse(&cur.status)
        .ok_or_else(|| AppError::internal("unknown subscription status"))?;
    let today = Utc::now().date_naive();
    domain::check_renewal(status, cur.auto_renew, cur.next_billing_date, today)
        .map_err(|m| AppError::Conflict(format!("subscription cannot renew: {m}")))?;
    let product = store::fetch::<Product>(&mut tx, cur.product_id)
        .await?
        .ok_or_else(|| AppError::Unprocessable("product of the subscription is gone".into()))?;
    let period = BillingPeriod::parse(&product.billing_period).unwrap_or(BillingPeriod::Monthly);
    let next: NaiveDate = domain::next_billing_date(cur.next_billing_date, period);
    sqlx::query(
        "UPDATE subscriptions SET next_billing_date=$1, version=version+1, updated_at=now() WHERE id=$2",
    )
    .bind(next)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Subscription>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Subscription>(id))?;
    emit(&st, &mut tx, &e, "renewed", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(Json(e))
}

// ---------------------------------------------------------------- invoices

struct InvoiceLine {
    description: String,
    line: Line,
}

fn invoice_items_input(f: &mut Fields<'_>) -> Option<Vec<InvoiceLine>> {
    let arr = f.array("items", true)?;
    if arr.is_empty() || arr.len() > 200 {
        f.error("items", "must have between 1 and 200 items");
        return None;
    }
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, v) in arr.iter().enumerate() {
        let Some(o) = v.as_object() else {
            errs.push(broken(&format!("items[{i}]"), "must be an object"));
            continue;
        };
        let mut g = Fields::nested(o, format!("items[{i}]."));
        let description = g.string("description", true, 500);
        let quantity = g.int("quantity", true, 1, 10_000);
        let unit_price = g.decimal("unitPrice", true, -MAX_MONEY, MAX_MONEY, false, 2);
        let tax_rate = g.decimal("taxRate", false, Decimal::ZERO, Decimal::ONE, false, 4);
        match g.finish() {
            Err(e) => errs.extend(e),
            Ok(()) => {
                if let (Some(description), Some(q), Some(u)) = (description, quantity, unit_price) {
                    out.push(InvoiceLine {
                        description,
                        line: Line {
                            quantity: q as i32,
                            unit_price: u,
                            tax_rate: tax_rate.unwrap_or(Decimal::ZERO),
                        },
                    });
                }
            }
        }
    }
    if !errs.is_empty() {
        f.extend(errs);
        return None;
    }
    Some(out)
}

async fn write_invoice_items(
    tx: &mut PgConnection,
    invoice_id: Uuid,
    items: &[InvoiceLine],
) -> ApiResult<Totals> {
    sqlx::query("DELETE FROM invoice_items WHERE invoice_id = $1")
        .bind(invoice_id)
        .execute(&mut *tx)
        .await?;
    for (i, it) in items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_items (id, invoice_id, line_no, description, quantity, unit_price, tax_rate, line_total) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        )
        .bind(Uuid::new_v4())
        .bind(invoice_id)
        .bind(i as i32)
        .bind(&it.description)
        .bind(it.line.quantity)
        .bind(it.line.unit_price)
        .bind(it.line.tax_rate)
        .bind(line_total(&it.line))
        .execute(&mut *tx)
        .await?;
    }
    let lines: Vec<Line> = items.iter().map(|i| i.line).collect();
    Ok(totals(&lines))
}

pub async fn create_invoice(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let customer_id = f.uuid("customerId", true);
    let invoice_type = f
        .one_of::<InvoiceType>("invoiceType", false)
        .unwrap_or(InvoiceType::OneTime);
    let issue = f.date("issueDate", false);
    let due = f.date("dueDate", true);
    let currency = currency(&mut f, "currency", true);
    let items = invoice_items_input(&mut f);
    let issue = issue.unwrap_or_else(|| Utc::now().date_naive());
    if due.is_some_and(|d| d < issue) {
        f.error("dueDate", "must not be before issueDate");
    }
    f.into_result()?;
    let (Some(customer_id), Some(due), Some(currency), Some(items)) =
        (customer_id, due, currency, items)
    else {
        return Err(AppError::field("body", "incomplete"));
    };
    let now = write::now();
    let lines: Vec<Line> = items.iter().map(|i| i.line).collect();
    let t = totals(&lines);
    let e = Invoice {
        id: Uuid::new_v4(),
        invoice_number: store::new_number("INV"),
        customer_id,
        invoice_type: invoice_type.as_str().to_string(),
        status: InvoiceStatus::Draft.to_string(),
        issue_date: issue,
        due_date: due,
        paid_date: None,
        currency,
        subtotal: money_scale(t.subtotal),
        tax_amount: money_scale(t.tax),
        total_amount: money_scale(t.total),
        overdue: false,
        items: items
            .iter()
            .map(|i| InvoiceItem {
                id: Uuid::new_v4(),
                description: i.description.clone(),
                quantity: i.line.quantity,
                unit_price: money_scale(i.line.unit_price),
                tax_rate: rate_scale(i.line.tax_rate),
                line_total: money_scale(line_total(&i.line)),
            })
            .collect(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let mut w = Write::new();
    let tm = w.bind(now);
    let cust = w.bind(customer_id);
    let sql = format!(
        "INSERT INTO invoices (id, invoice_number, customer_id, invoice_type, status, issue_date, due_date, \
         currency, subtotal, tax_amount, total_amount, created_at, updated_at, version) \
         SELECT {}, {}, {cust}, {}, {}, {}, {}, {}, {}, {}, {}, {tm}, {tm}, 1 \
         WHERE EXISTS (SELECT 1 FROM customers WHERE id = {cust}) RETURNING id",
        w.bind(e.id),
        w.bind(e.invoice_number.clone()),
        w.bind(e.invoice_type.clone()),
        w.bind(e.status.clone()),
        w.bind(e.issue_date),
        w.bind(e.due_date),
        w.bind(e.currency.clone()),
        w.bind(e.subtotal),
        w.bind(e.tax_amount),
        w.bind(e.total_amount),
    );
    w.cte("e", sql, true);
    let items_sql = format!(
        "INSERT INTO invoice_items (id, invoice_id, line_no, description, quantity, unit_price, tax_rate, line_total) \
         SELECT u.id, e.id, u.n - 1, u.description, u.quantity, u.unit_price, u.tax_rate, u.line_total \
         FROM e, unnest({}::uuid[], {}::text[], {}::int4[], {}::numeric[], {}::numeric[], {}::numeric[]) \
         WITH ORDINALITY AS u(id, description, quantity, unit_price, tax_rate, line_total, n)",
        w.bind(e.items.iter().map(|i| i.id).collect::<Vec<_>>()),
        w.bind(e.items.iter().map(|i| i.description.clone()).collect::<Vec<_>>()),
        w.bind(e.items.iter().map(|i| i.quantity).collect::<Vec<_>>()),
        w.bind(e.items.iter().map(|i| i.unit_price).collect::<Vec<_>>()),
        w.bind(e.items.iter().map(|i| i.tax_rate).collect::<Vec<_>>()),
        w.bind(e.items.iter().map(|i| i.line_total).collect::<Vec<_>>()),
    );
    w.cte("i", items_sql, false);
    w.event(&st, "e", &e, &event_of(&e, "created", None));
    w.remember(&e);
    let counts = w.run(&st, vec![write::change_of(&e)]).await?;
    if counts.first().copied().unwrap_or(0) == 0 {
        return Err(AppError::BrokenReference(vec![broken(
            "customerId",
            format!("customer {customer_id} does not exist"),
        )]));
    }
    count_status(&st, "invoice", &e);
    Ok(created(e))
}

pub async fn update_invoice(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Invoice>> {
    let id = path_id(&id)?;
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let due = f.date("dueDate", true);
    let items = invoice_items_input(&mut f);
    let version = f.int("version", true, 1, i64::MAX);
    f.into_result()?;
    let (Some(due), Some(items), Some(version)) = (due, items, version) else {
        return Err(AppError::field("body", "incomplete"));
    };
    let mut tx = st.write.begin().await?;
    let cur = store::lock::<Invoice>(&mut tx, id).await?;
    store::check_version(&cur, version)?;
    if let Some(s) = InvoiceStatus::parse(&cur.status) {
        domain::invoice_editable(s)?;
    }
    if due < cur.issue_date {
        return Err(AppError::field("dueDate", "must not be before issueDate"));
    }
    let t = write_invoice_items(&mut tx, id, &items).await?;
    sqlx::query(
        "UPDATE invoices SET due_date=$1, subtotal=$2, tax_amount=$3, total_amount=$4, \
         version=version+1, updated_at=now() WHERE id=$5",
    )
    .bind(due)
    .bind(t.subtotal)
    .bind(t.tax)
    .bind(t.total)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let e = store::fetch::<Invoice>(&mut tx, id)
        .await?
        .ok_or_else(|| store::not_found::<Invoice>(id))?;
    emit(&st, &mut tx, &e, "updated", None).await?;
    write::commit(&st, tx, vec![write::change_of(&e)]).await?;
    Ok(Json(e))
}

// ---------------------------------------------------------------- payments

pub async fn create_payment(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let customer_id = f.uuid("customerId", true);
    let invoice_id = f.uuid("invoiceId", false);
    let amount = f.decimal("amount", true, Decimal::ZERO, MAX_MONEY, true, 2);
    let currency = currency(&mut f, "currency", true);
    let method = f.one_of::<PaymentMethod>("method", true);
    f.into_result()?;
    let (Some(customer_id), Some(amount), Some(currency), Some(method)) =
        (customer_id, amount, currency, method)
    else {
        return Err(AppError::field("body", "incomplete"));
    };
    let now = write::now();
    let e = Payment {
        id: Uuid::new_v4(),
        payment_number: store::new_number("PAY"),
        customer_id,
        invoice_id,
        amount: money_scale(amount),
        currency,
        method: method.as_str().to_string(),
        status: PaymentStatus::Pending.to_string(),
        failure_reason: None,
        refund_reason: None,
        processed_at: None,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let mut w = Write::new();
    let tm = w.bind(now);
    let cust = w.bind(customer_id);
    let inv = w.bind(invoice_id);
    let sql = format!(
        "INSERT INTO payments (id, payment_number, customer_id, invoice_id, amount, currency, method, status, \
         created_at, updated_at, version) SELECT {}, {}, {cust}, {inv}, {}, {}, {}, {}, {tm}, {tm}, 1 \
         WHERE EXISTS (SELECT 1 FROM customers WHERE id = {cust}) \
         AND ({inv}::uuid IS NULL OR EXISTS (SELECT 1 FROM invoices WHERE id = {inv} AND customer_id = {cust})) \
         RETURNING id",
        w.bind(e.id),
        w.bind(e.payment_number.clone()),
        w.bind(e.amount),
        w.bind(e.currency.clone()),
        w.bind(e.method.clone()),
        w.bind(e.status.clone()),
    );
    w.cte("e", sql, true);
    w.event(&st, "e", &e, &event_of(&e, "created", None));
    w.remember(&e);
    let counts = w.run(&st, vec![write::change_of(&e)]).await?;
    if counts.first().copied().unwrap_or(0) == 0 {
        // A reference did not hold: find out which, for the error (the rare path).
        let mut conn = st.write.acquire().await?;
        let mut errs = Vec::new();
        fetch_or_broken::<Customer>(&mut conn, customer_id, "customerId", &mut errs).await?;
        if let Some(iid) = invoice_id {
            if let Some(inv) =
                fetch_or_broken::<Invoice>(&mut conn, iid, "invoiceId", &mut errs).await?
            {
                if inv.customer_id != customer_id {
                    errs.push(broken("invoiceId", "invoice belongs to another customer"));
                }
            }
        }
        refs_ok(errs)?;
        return Err(AppError::Conflict(
            "the customer or invoice changed while the payment was written; retry".into(),
        ));
    }
    count_status(&st, "payment", &e);
    Ok(created(e))
}

// ---------------------------------------------------------------- status side effects

/// Checks of a status change that depend on the request, before anything is written.
pub fn before_status(entity: &str, to: &str, reason: Option<&str>) -> ApiResult<()> {
    if entity == "payment" && to == "REFUNDED" && reason.is_none() {
        return Err(AppError::field("reason", "is required to refund a payment"));
    }
    Ok(())
}

/// Per-resource columns a status change sets besides status, version and updated_at: returns
/// the `, column = $n` fragments for the UPDATE and applies the same values to `v`, the JSON of
/// the entity as it will be after the change.
pub fn status_sets(
    w: &mut Write,
    entity: &str,
    to: &str,
    reason: Option<&str>,
    now: chrono::DateTime<Utc>,
    v: &mut Value,
) -> String {
    let today = now.date_naive();
    let mut sets = String::new();
    match (entity, to) {
        ("payment", "COMPLETED") => {
            sets.push_str(&format!(", processed_at = {}", w.bind(now)));
            v["processedAt"] = serde_json::json!(now);
        }
        ("payment", "FAILED") => {
            sets.push_str(&format!(
                ", failure_reason = {}, processed_at = {}",
                w.bind(reason.map(str::to_string)),
                w.bind(now)
            ));
            v["failureReason"] = serde_json::json!(reason);
            v["processedAt"] = serde_json::json!(now);
        }
        ("payment", "REFUNDED") => {
            sets.push_str(&format!(
                ", refund_reason = {}",
                w.bind(reason.map(str::to_string))
            ));
            v["refundReason"] = serde_json::json!(reason);
        }
        ("invoice", "PAID") => {
            sets.push_str(&format!(", paid_date = {}", w.bind(today)));
            v["paidDate"] = serde_json::json!(today);
        }
        ("subscription", "CANCELLED" | "EXPIRED") => {
            sets.push_str(&format!(
                ", end_date = COALESCE(end_date, {}), auto_renew = false",
                w.bind(today)
            ));
            if v["endDate"].is_null() {
                v["endDate"] = serde_json::json!(today);
            }
            v["autoRenew"] = Value::Bool(false);
        }
        _ => {}
    }
    if entity == "invoice" {
        let due = v["dueDate"]
            .as_str()
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        v["overdue"] =
            Value::Bool(matches!(to, "SENT" | "VIEWED") && due.is_some_and(|d| d < today));
    }
    sets
}

/// Whether completing `payment` pays `invoice` in full (and so marks it PAID).
pub fn pays_invoice(payment: &Value, invoice: &Invoice) -> bool {
    let amount = payment["amount"]
        .as_str()
        .and_then(|a| a.parse::<Decimal>().ok());
    let currency = payment["currency"].as_str().unwrap_or_default();
    matches!(invoice.status.as_str(), "SENT" | "VIEWED")
        && amount == Some(invoice.total_amount)
        && invoice.currency.trim() == currency.trim()
}

/// DELETE is allowed for customers and products nobody references, PENDING orders and DRAFT
/// invoices; payments and subscriptions are never deleted (they are cancelled).
pub fn check_deletable<E: Entity>(e: &E) -> ApiResult<()> {
    let ok = match E::NAME {
        "order" => e.status() == "PENDING",
        "invoice" => e.status() == "DRAFT",
        "customer" | "product" => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(RuleViolation::ReadOnly {
            entity: E::NAME,
            status: e.status().to_string(),
        }
        .into())
    }
}
