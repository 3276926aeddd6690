//! Representations of the six resources as stored and as served (camelCase JSON), and the
//! `Entity` trait that lets generic code fetch, list, cache and emit events for any of them.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::FromRow;
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::domain::*;

/// What generic code needs to know about a resource.
pub trait Entity:
    for<'r> FromRow<'r, PgRow>
    + Serialize
    + DeserializeOwned
    + JsonSchema
    + Send
    + Sync
    + Unpin
    + 'static
{
    /// Singular name: event types, topics (`bss.<NAME>.events`), cache keys.
    const NAME: &'static str;
    /// URL segment, also the table name.
    const PLURAL: &'static str;
    /// SELECT list with alias `t` for the table, ending before WHERE.
    const SELECT: &'static str;
    /// Whether the table has `customer_id` (list filter, dependent cache keys).
    const HAS_CUSTOMER: bool;
    /// Columns clients may sort by: (API name, column).
    const SORTABLE: &'static [(&'static str, &'static str)];
    type Status: Lifecycle;
    /// Statuses valid in filters.
    fn statuses() -> Vec<&'static str>;
    fn id(&self) -> Uuid;
    fn version(&self) -> i64;
    fn status(&self) -> &str;
    fn customer_id(&self) -> Option<Uuid>;
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub phone: Option<String>,
    pub national_id: Option<String>,
    #[schemars(with = "CustomerStatus")]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Entity for Customer {
    type Status = CustomerStatus;
    const NAME: &'static str = "customer";
    const PLURAL: &'static str = "customers";
    const SELECT: &'static str = "SELECT t.* FROM customers t";
    const HAS_CUSTOMER: bool = false;
    const SORTABLE: &'static [(&'static str, &'static str)] = &[
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("status", "status"),
        ("lastName", "last_name"),
        ("email", "email"),
    ];
    fn statuses() -> Vec<&'static str> {
        CustomerStatus::ALL.iter().map(|s| s.as_str()).collect()
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn customer_id(&self) -> Option<Uuid> {
        Some(self.id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub description: Option<String>,
    #[schemars(with = "ProductType")]
    pub product_type: String,
    #[schemars(with = "ProductCategory")]
    pub category: String,
    pub price: Decimal,
    pub currency: String,
    #[schemars(with = "BillingPeriod")]
    pub billing_period: String,
    #[sqlx(json)]
    pub features: BTreeMap<String, String>,
    #[schemars(with = "ProductStatus")]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Entity for Product {
    type Status = ProductStatus;
    const NAME: &'static str = "product";
    const PLURAL: &'static str = "products";
    const SELECT: &'static str = "SELECT t.* FROM products t";
    const HAS_CUSTOMER: bool = false;
    const SORTABLE: &'static [(&'static str, &'static str)] = &[
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("status", "status"),
        ("code", "code"),
        ("price", "price"),
    ];
    fn statuses() -> Vec<&'static str> {
        ProductStatus::ALL.iter().map(|s| s.as_str()).collect()
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn customer_id(&self) -> Option<Uuid> {
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub id: Uuid,
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price: Decimal,
    pub tax_rate: Decimal,
    pub line_total: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    #[schemars(with = "OrderType")]
    pub order_type: String,
    #[schemars(with = "OrderPriority")]
    pub priority: String,
    #[schemars(with = "OrderStatus")]
    pub status: String,
    pub currency: String,
    pub subtotal: Decimal,
    pub tax_amount: Decimal,
    pub total_amount: Decimal,
    pub notes: Option<String>,
    #[sqlx(json)]
    pub items: Vec<OrderItem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Entity for Order {
    type Status = OrderStatus;
    const NAME: &'static str = "order";
    const PLURAL: &'static str = "orders";
    const SELECT: &'static str = "SELECT t.*, COALESCE((SELECT jsonb_agg(jsonb_build_object(\
        'id', i.id, 'productId', i.product_id, 'quantity', i.quantity, \
        'unitPrice', i.unit_price::text, 'taxRate', i.tax_rate::text, 'lineTotal', i.line_total::text) \
        ORDER BY i.line_no) FROM order_items i WHERE i.order_id = t.id), '[]'::jsonb) AS items \
        FROM orders t";
    const HAS_CUSTOMER: bool = true;
    const SORTABLE: &'static [(&'static str, &'static str)] = &[
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("status", "status"),
        ("totalAmount", "total_amount"),
        ("orderNumber", "order_number"),
    ];
    fn statuses() -> Vec<&'static str> {
        OrderStatus::ALL.iter().map(|s| s.as_str()).collect()
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: Uuid,
    pub subscription_number: String,
    pub customer_id: Uuid,
    pub product_id: Uuid,
    pub order_id: Option<Uuid>,
    #[schemars(with = "SubscriptionStatus")]
    pub status: String,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    pub next_billing_date: NaiveDate,
    pub price: Decimal,
    pub discount: Decimal,
    pub currency: String,
    pub auto_renew: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Entity for Subscription {
    type Status = SubscriptionStatus;
    const NAME: &'static str = "subscription";
    const PLURAL: &'static str = "subscriptions";
    const SELECT: &'static str = "SELECT t.* FROM subscriptions t";
    const HAS_CUSTOMER: bool = true;
    const SORTABLE: &'static [(&'static str, &'static str)] = &[
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("status", "status"),
        ("nextBillingDate", "next_billing_date"),
    ];
    fn statuses() -> Vec<&'static str> {
        SubscriptionStatus::ALL.iter().map(|s| s.as_str()).collect()
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceItem {
    pub id: Uuid,
    pub description: String,
    pub quantity: i32,
    pub unit_price: Decimal,
    pub tax_rate: Decimal,
    pub line_total: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    pub id: Uuid,
    pub invoice_number: String,
    pub customer_id: Uuid,
    #[schemars(with = "InvoiceType")]
    pub invoice_type: String,
    #[schemars(with = "InvoiceStatus")]
    pub status: String,
    pub issue_date: NaiveDate,
    pub due_date: NaiveDate,
    pub paid_date: Option<NaiveDate>,
    pub currency: String,
    pub subtotal: Decimal,
    pub tax_amount: Decimal,
    pub total_amount: Decimal,
    /// SENT or VIEWED past the due date (computed when read).
    pub overdue: bool,
    #[sqlx(json)]
    pub items: Vec<InvoiceItem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Entity for Invoice {
    type Status = InvoiceStatus;
    const NAME: &'static str = "invoice";
    const PLURAL: &'static str = "invoices";
    const SELECT: &'static str = "SELECT t.*, (t.status IN ('SENT','VIEWED') AND t.due_date < current_date) AS overdue, \
        COALESCE((SELECT jsonb_agg(jsonb_build_object(\
        'id', i.id, 'description', i.description, 'quantity', i.quantity, \
        'unitPrice', i.unit_price::text, 'taxRate', i.tax_rate::text, 'lineTotal', i.line_total::text) \
        ORDER BY i.line_no) FROM invoice_items i WHERE i.invoice_id = t.id), '[]'::jsonb) AS items \
        FROM invoices t";
    const HAS_CUSTOMER: bool = true;
    const SORTABLE: &'static [(&'static str, &'static str)] = &[
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("status", "status"),
        ("dueDate", "due_date"),
        ("issueDate", "issue_date"),
        ("totalAmount", "total_amount"),
    ];
    fn statuses() -> Vec<&'static str> {
        InvoiceStatus::ALL.iter().map(|s| s.as_str()).collect()
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub id: Uuid,
    pub payment_number: String,
    pub customer_id: Uuid,
    pub invoice_id: Option<Uuid>,
    pub amount: Decimal,
    pub currency: String,
    #[schemars(with = "PaymentMethod")]
    pub method: String,
    #[schemars(with = "PaymentStatus")]
    pub status: String,
    pub failure_reason: Option<String>,
    pub refund_reason: Option<String>,
    pub processed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Entity for Payment {
    type Status = PaymentStatus;
    const NAME: &'static str = "payment";
    const PLURAL: &'static str = "payments";
    const SELECT: &'static str = "SELECT t.* FROM payments t";
    const HAS_CUSTOMER: bool = true;
    const SORTABLE: &'static [(&'static str, &'static str)] = &[
        ("createdAt", "created_at"),
        ("updatedAt", "updated_at"),
        ("status", "status"),
        ("amount", "amount"),
    ];
    fn statuses() -> Vec<&'static str> {
        PaymentStatus::ALL.iter().map(|s| s.as_str()).collect()
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub size: i64,
    pub total_items: i64,
    pub total_pages: i64,
}
