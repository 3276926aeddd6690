//! The pure domain: status enums, life-cycle rules, money arithmetic and field rules.
//! No I/O here; the API layer calls these before touching the database.

use rust_decimal::{Decimal, RoundingStrategy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares a closed set of string values (statuses, types) with `as_str`/`parse` and a schema enum.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name { $( #[serde(rename = $s)] $var ),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$var),)+ _ => None } }
            pub fn allowed_values() -> String {
                [$($s),+].join(", ")
            }
        }
        impl StringEnum for $name {
            fn parse(s: &str) -> Option<Self> { $name::parse(s) }
            fn allowed_values() -> String { $name::allowed_values() }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

/// A closed set of string values, as declared by `string_enum!`.
pub trait StringEnum: Sized {
    fn parse(s: &str) -> Option<Self>;
    /// The values, comma separated (for error messages).
    fn allowed_values() -> String;
}

/// A status set with its allowed transitions.
pub trait Lifecycle: Copy + Eq + std::fmt::Display + 'static {
    const ALL: &'static [Self];
    fn parse_str(s: &str) -> Option<Self>;
    fn can_transition(self, to: Self) -> bool;
    /// Final states: no transition out and, where the domain says so, read-only.
    fn is_final(self) -> bool {
        !Self::ALL.iter().any(|t| self.can_transition(*t))
    }
}

string_enum!(CustomerStatus { Active => "ACTIVE", Inactive => "INACTIVE", Suspended => "SUSPENDED", Terminated => "TERMINATED" });
string_enum!(ProductStatus { Active => "ACTIVE", Inactive => "INACTIVE", Deprecated => "DEPRECATED", Suspended => "SUSPENDED", Discontinued => "DISCONTINUED" });
string_enum!(OrderStatus { Pending => "PENDING", Approved => "APPROVED", InProgress => "IN_PROGRESS", Processing => "PROCESSING", Completed => "COMPLETED", Rejected => "REJECTED", Cancelled => "CANCELLED" });
string_enum!(SubscriptionStatus { Active => "ACTIVE", Suspended => "SUSPENDED", Cancelled => "CANCELLED", Expired => "EXPIRED" });
string_enum!(InvoiceStatus { Draft => "DRAFT", Sent => "SENT", Viewed => "VIEWED", Paid => "PAID", Cancelled => "CANCELLED" });
string_enum!(PaymentStatus { Pending => "PENDING", Processing => "PROCESSING", Completed => "COMPLETED", Failed => "FAILED", Cancelled => "CANCELLED", Refunded => "REFUNDED" });

string_enum!(ProductType { Service => "SERVICE", Tariff => "TARIFF", Bundle => "BUNDLE", Addon => "ADDON" });
string_enum!(ProductCategory { Mobile => "MOBILE", Broadband => "BROADBAND", Tv => "TV", Cloud => "CLOUD", Basic => "BASIC" });
string_enum!(BillingPeriod { Monthly => "MONTHLY", Quarterly => "QUARTERLY", Yearly => "YEARLY", OneTime => "ONE_TIME" });
string_enum!(OrderType { New => "NEW", Change => "CHANGE", Upgrade => "UPGRADE", Cancel => "CANCEL", Suspend => "SUSPEND", Resume => "RESUME" });
string_enum!(OrderPriority { Low => "LOW", Normal => "NORMAL", High => "HIGH", Urgent => "URGENT" });
string_enum!(InvoiceType { Recurring => "RECURRING", OneTime => "ONE_TIME", Usage => "USAGE", Adjustment => "ADJUSTMENT" });
string_enum!(PaymentMethod { Card => "CARD", BankTransfer => "BANK_TRANSFER", Cash => "CASH", DirectDebit => "DIRECT_DEBIT", MobilePay => "MOBILE_PAY" });

impl Lifecycle for CustomerStatus {
    const ALL: &'static [Self] = CustomerStatus::ALL;
    fn parse_str(s: &str) -> Option<Self> {
        Self::parse(s)
    }
    fn can_transition(self, to: Self) -> bool {
        use CustomerStatus::*;
        matches!(
            (self, to),
            (Active, Inactive | Suspended | Terminated)
                | (Inactive | Suspended, Active | Terminated)
        )
    }
}

/// DOMAIN.md lists the product states without arrows; we allow any move between the
/// non-final states and treat DISCONTINUED as final (a discontinued product never returns).
impl Lifecycle for ProductStatus {
    const ALL: &'static [Self] = ProductStatus::ALL;
    fn parse_str(s: &str) -> Option<Self> {
        Self::parse(s)
    }
    fn can_transition(self, to: Self) -> bool {
        self != to && self != ProductStatus::Discontinued
    }
}

impl Lifecycle for OrderStatus {
    const ALL: &'static [Self] = OrderStatus::ALL;
    fn parse_str(s: &str) -> Option<Self> {
        Self::parse(s)
    }
    fn can_transition(self, to: Self) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, Approved | Rejected | Cancelled)
                | (Approved, InProgress | Cancelled)
                | (InProgress, Processing | Cancelled)
                | (Processing, Completed)
        )
    }
}

impl Lifecycle for SubscriptionStatus {
    const ALL: &'static [Self] = SubscriptionStatus::ALL;
    fn parse_str(s: &str) -> Option<Self> {
        Self::parse(s)
    }
    fn can_transition(self, to: Self) -> bool {
        use SubscriptionStatus::*;
        matches!(
            (self, to),
            (Active, Suspended) | (Suspended, Active) | (Active | Suspended, Cancelled | Expired)
        )
    }
}

/// SENT → PAID is allowed besides VIEWED → PAID: a customer may pay an invoice without
/// the viewing being recorded, and a completed payment of the whole invoice must mark it PAID.
impl Lifecycle for InvoiceStatus {
    const ALL: &'static [Self] = InvoiceStatus::ALL;
    fn parse_str(s: &str) -> Option<Self> {
        Self::parse(s)
    }
    fn can_transition(self, to: Self) -> bool {
        use InvoiceStatus::*;
        matches!(
            (self, to),
            (Draft, Sent)
                | (Sent, Viewed)
                | (Sent | Viewed, Paid)
                | (Draft | Sent | Viewed, Cancelled)
        )
    }
}

impl Lifecycle for PaymentStatus {
    const ALL: &'static [Self] = PaymentStatus::ALL;
    fn parse_str(s: &str) -> Option<Self> {
        Self::parse(s)
    }
    fn can_transition(self, to: Self) -> bool {
        use PaymentStatus::*;
        matches!(
            (self, to),
            (Pending, Processing | Completed | Failed | Cancelled)
                | (Processing, Completed | Failed)
                | (Failed, Cancelled)
                | (Completed, Refunded)
        )
    }
}

/// Why a requested change is refused by the domain (mapped to 409 by the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    #[error("transition {from} -> {to} is not allowed for {entity}")]
    IllegalTransition {
        entity: &'static str,
        from: String,
        to: String,
    },
    #[error("{entity} in status {status} cannot be modified")]
    ReadOnly {
        entity: &'static str,
        status: String,
    },
}

pub fn check_transition<S: Lifecycle>(
    entity: &'static str,
    from: S,
    to: S,
) -> Result<(), RuleViolation> {
    if from.can_transition(to) {
        Ok(())
    } else {
        Err(RuleViolation::IllegalTransition {
            entity,
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

/// Customers are read-only once TERMINATED.
pub fn customer_editable(s: CustomerStatus) -> Result<(), RuleViolation> {
    if s == CustomerStatus::Terminated {
        return Err(RuleViolation::ReadOnly {
            entity: "customer",
            status: s.to_string(),
        });
    }
    Ok(())
}

/// Order items (and the order itself) are editable only while PENDING.
pub fn order_editable(s: OrderStatus) -> Result<(), RuleViolation> {
    if s != OrderStatus::Pending {
        return Err(RuleViolation::ReadOnly {
            entity: "order",
            status: s.to_string(),
        });
    }
    Ok(())
}

/// Invoice content is editable only while DRAFT.
pub fn invoice_editable(s: InvoiceStatus) -> Result<(), RuleViolation> {
    if s != InvoiceStatus::Draft {
        return Err(RuleViolation::ReadOnly {
            entity: "invoice",
            status: s.to_string(),
        });
    }
    Ok(())
}

/// Subscriptions in a final state (CANCELLED, EXPIRED) are read-only.
pub fn subscription_editable(s: SubscriptionStatus) -> Result<(), RuleViolation> {
    if s.is_final() {
        return Err(RuleViolation::ReadOnly {
            entity: "subscription",
            status: s.to_string(),
        });
    }
    Ok(())
}

/// Renewal happens only for an ACTIVE, auto-renewing subscription whose billing date is due.
pub fn check_renewal(
    status: SubscriptionStatus,
    auto_renew: bool,
    next_billing: chrono::NaiveDate,
    today: chrono::NaiveDate,
) -> Result<(), String> {
    if status != SubscriptionStatus::Active {
        return Err(format!(
            "subscription is {status}, only ACTIVE subscriptions renew"
        ));
    }
    if !auto_renew {
        return Err("subscription does not auto-renew".into());
    }
    if next_billing > today {
        return Err(format!("renewal is not due before {next_billing}"));
    }
    Ok(())
}

pub fn next_billing_date(from: chrono::NaiveDate, period: BillingPeriod) -> chrono::NaiveDate {
    let months = match period {
        BillingPeriod::Monthly | BillingPeriod::OneTime => 1,
        BillingPeriod::Quarterly => 3,
        BillingPeriod::Yearly => 12,
    };
    from.checked_add_months(chrono::Months::new(months))
        .unwrap_or(from)
}

/// Money amounts are rounded to cents, half away from zero, at line level.
pub fn round_money(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// A priced line: quantity × unit price, taxed at `tax_rate` (0.2 = 20 %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub quantity: i32,
    pub unit_price: Decimal,
    pub tax_rate: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
}

pub fn line_total(l: &Line) -> Decimal {
    round_money(Decimal::from(l.quantity) * l.unit_price)
}

pub fn totals(lines: &[Line]) -> Totals {
    let mut t = Totals::default();
    for l in lines {
        let net = line_total(l);
        t.subtotal += net;
        t.tax += round_money(net * l.tax_rate);
    }
    t.total = t.subtotal + t.tax;
    t
}

/// ISO 4217 codes accepted for prices and payments (active codes in common use).
pub const CURRENCIES: &[&str] = &[
    "AED", "ARS", "AUD", "BGN", "BRL", "CAD", "CHF", "CLP", "CNY", "COP", "CZK", "DKK", "EGP",
    "EUR", "GBP", "HKD", "HUF", "IDR", "ILS", "INR", "ISK", "JPY", "KES", "KRW", "MAD", "MXN",
    "MYR", "NGN", "NOK", "NZD", "PEN", "PHP", "PKR", "PLN", "RON", "RSD", "RUB", "SAR", "SEK",
    "SGD", "THB", "TRY", "TWD", "UAH", "USD", "VND", "ZAR",
];

pub fn valid_currency(c: &str) -> bool {
    CURRENCIES.contains(&c)
}

pub fn valid_email(e: &str) -> bool {
    if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

pub fn valid_phone(p: &str) -> bool {
    let digits = p.chars().filter(char::is_ascii_digit).count();
    let rest_ok = p
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_digit() || c == ' ' || c == '-' || (c == '+' && i == 0));
    rest_ok && (6..=15).contains(&digits) && p.len() <= 20
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn allowed<S: Lifecycle>() -> Vec<(String, String)> {
        let mut v = Vec::new();
        for a in S::ALL {
            for b in S::ALL {
                if a.can_transition(*b) {
                    v.push((a.to_string(), b.to_string()));
                }
            }
        }
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = p
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        v.sort();
        v
    }

    fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
        v.sort();
        v
    }

    #[test]
    fn customer_transitions_are_exactly_the_domain_table() {
        assert_eq!(
            sorted(allowed::<CustomerStatus>()),
            pairs(&[
                ("ACTIVE", "INACTIVE"),
                ("ACTIVE", "SUSPENDED"),
                ("ACTIVE", "TERMINATED"),
                ("INACTIVE", "ACTIVE"),
                ("INACTIVE", "TERMINATED"),
                ("SUSPENDED", "ACTIVE"),
                ("SUSPENDED", "TERMINATED"),
            ])
        );
        assert!(CustomerStatus::Terminated.is_final());
        assert!(customer_editable(CustomerStatus::Terminated).is_err());
    }

    #[test]
    fn order_transitions_are_exactly_the_domain_table() {
        assert_eq!(
            sorted(allowed::<OrderStatus>()),
            pairs(&[
                ("PENDING", "APPROVED"),
                ("APPROVED", "IN_PROGRESS"),
                ("IN_PROGRESS", "PROCESSING"),
                ("PROCESSING", "COMPLETED"),
                ("PENDING", "REJECTED"),
                ("PENDING", "CANCELLED"),
                ("APPROVED", "CANCELLED"),
                ("IN_PROGRESS", "CANCELLED"),
            ])
        );
        assert!(order_editable(OrderStatus::Pending).is_ok());
        for s in OrderStatus::ALL
            .iter()
            .filter(|s| **s != OrderStatus::Pending)
        {
            assert!(order_editable(*s).is_err());
        }
    }

    #[test]
    fn subscription_transitions_are_exactly_the_domain_table() {
        assert_eq!(
            sorted(allowed::<SubscriptionStatus>()),
            pairs(&[
                ("ACTIVE", "SUSPENDED"),
                ("SUSPENDED", "ACTIVE"),
                ("ACTIVE", "CANCELLED"),
                ("ACTIVE", "EXPIRED"),
                ("SUSPENDED", "CANCELLED"),
                ("SUSPENDED", "EXPIRED"),
            ])
        );
        assert!(SubscriptionStatus::Cancelled.is_final() && SubscriptionStatus::Expired.is_final());
    }

    #[test]
    fn invoice_transitions_are_exactly_the_domain_table() {
        assert_eq!(
            sorted(allowed::<InvoiceStatus>()),
            pairs(&[
                ("DRAFT", "SENT"),
                ("SENT", "VIEWED"),
                ("SENT", "PAID"),
                ("VIEWED", "PAID"),
                ("DRAFT", "CANCELLED"),
                ("SENT", "CANCELLED"),
                ("VIEWED", "CANCELLED"),
            ])
        );
    }

    #[test]
    fn payment_transitions_are_exactly_the_domain_table() {
        assert_eq!(
            sorted(allowed::<PaymentStatus>()),
            pairs(&[
                ("PENDING", "PROCESSING"),
                ("PENDING", "COMPLETED"),
                ("PENDING", "FAILED"),
                ("PENDING", "CANCELLED"),
                ("PROCESSING", "COMPLETED"),
                ("PROCESSING", "FAILED"),
                ("FAILED", "CANCELLED"),
                ("COMPLETED", "REFUNDED"),
            ])
        );
    }

    #[test]
    fn product_discontinued_is_final() {
        assert!(ProductStatus::Discontinued.is_final());
        assert!(ProductStatus::Deprecated.can_transition(ProductStatus::Active));
    }

    #[test]
    fn renewal_rules() {
        let d = |s| chrono::NaiveDate::from_str(s).unwrap();
        let today = d("2026-03-10");
        assert!(check_renewal(SubscriptionStatus::Active, true, d("2026-03-10"), today).is_ok());
        assert!(check_renewal(SubscriptionStatus::Active, false, d("2026-03-01"), today).is_err());
        assert!(check_renewal(SubscriptionStatus::Active, true, d("2026-03-11"), today).is_err());
        assert!(
            check_renewal(SubscriptionStatus::Suspended, true, d("2026-03-01"), today).is_err()
        );
        assert_eq!(
            next_billing_date(d("2026-01-31"), BillingPeriod::Monthly),
            d("2026-02-28")
        );
    }

    #[test]
    fn money_is_exact() {
        let l = |q, p: &str, r: &str| Line {
            quantity: q,
            unit_price: Decimal::from_str(p).unwrap(),
            tax_rate: Decimal::from_str(r).unwrap(),
        };
        let t = totals(&[l(3, "0.10", "0.2"), l(1, "19.99", "0.19")]);
        assert_eq!(t.subtotal.to_string(), "20.29");
        assert_eq!(t.tax.to_string(), "3.86"); // 0.06 + 3.7981 -> 3.80
        assert_eq!(t.total, t.subtotal + t.tax);
    }

    #[test]
    fn field_rules() {
        assert!(valid_email("a.b@example.com"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("a b@example.com"));
        assert!(valid_phone("+49 170 1234567"));
        assert!(!valid_phone("12ab"));
        assert!(valid_currency("EUR") && !valid_currency("EU") && !valid_currency("XXX"));
    }

    proptest::proptest! {
        #[test]
        fn totals_add_up(qs in proptest::collection::vec((1i32..1000, 0i64..10_000_000, 0i64..3000), 1..20)) {
            let lines: Vec<Line> = qs.iter().map(|(q, cents, bp)| Line {
                quantity: *q, unit_price: Decimal::new(*cents, 2), tax_rate: Decimal::new(*bp, 4),
            }).collect();
            let t = totals(&lines);
            proptest::prop_assert_eq!(t.total, t.subtotal + t.tax);
            proptest::prop_assert!(t.subtotal.scale() <= 2 && t.tax.scale() <= 2);
        }
    }
}
