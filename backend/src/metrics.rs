//! Prometheus metrics. Names are fixed by DOMAIN.md ("Metrics") because alert rules use them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub events_total: IntCounterVec,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub orders_total: IntCounterVec,
    pub payments_total: IntCounterVec,
    pub invoices_total: IntCounterVec,
    pub cache_requests_total: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub event_publish_duration_seconds: HistogramVec,
    pub db_pool_connections: IntGaugeVec,
    /// 1 while a cache kind pays for itself and is used, 0 while the policy skips it.
    pub cache_enabled: IntGaugeVec,
    /// API requests shed before any work (in-flight limit), by route.
    pub shed_total: IntCounterVec,
    pub cache_invalidations_total: IntCounterVec,
    pub cache_loads_total: IntCounterVec,
    pub outbox_publish_failures_total: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} definition is static and valid: {e}"));
    // Registration only fails for duplicate names, which the fixed set here excludes.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new("bss_http_request_duration_seconds", "HTTP request latency")
                .buckets(buckets.clone()),
            &["route", "method"],
        )
        .unwrap_or_else(|e| panic!("static histogram definition: {e}"));
        let _ = r.register(Box::new(http_request_duration_seconds.clone()));
        let event_publish_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bss_event_publish_duration_seconds",
                "Time to publish an outbox batch to the broker",
            )
            .buckets(buckets),
            &["topic"],
        )
        .unwrap_or_else(|e| panic!("static histogram definition: {e}"));
        let _ = r.register(Box::new(event_publish_duration_seconds.clone()));
        let outbox_pending = IntGauge::new("bss_outbox_pending", "Outbox rows not yet published")
            .unwrap_or_else(|e| panic!("static gauge definition: {e}"));
        let _ = r.register(Box::new(outbox_pending.clone()));
        let db_pool_connections = IntGaugeVec::new(
            Opts::new("bss_db_pool_connections", "Database pool connections"),
            &["pool", "state"],
        )
        .unwrap_or_else(|e| panic!("static gauge definition: {e}"));
        let _ = r.register(Box::new(db_pool_connections.clone()));
        let cache_enabled = IntGaugeVec::new(
            Opts::new(
                "bss_cache_enabled",
                "Whether a cache kind is used (1) or skipped because its hit ratio is too low (0)",
            ),
            &["cache"],
        )
        .unwrap_or_else(|e| panic!("static gauge definition: {e}"));
        let _ = r.register(Box::new(cache_enabled.clone()));
        Metrics {
            shed_total: counter(
                &r,
                "bss_http_shed_total",
                "API requests shed with 429 because too many were in flight",
                &["route"],
            ),
            events_total: counter(&r, "bss_events_total", "Events published", &["type"]),
            http_requests_total: counter(
                &r,
                "bss_http_requests_total",
                "HTTP requests",
                &["route", "method", "status"],
            ),
            orders_total: counter(
                &r,
                "bss_orders_total",
                "Orders entering a status",
                &["status"],
            ),
            payments_total: counter(
                &r,
                "bss_payments_total",
                "Payments entering a status",
                &["status", "method"],
            ),
            invoices_total: counter(
                &r,
                "bss_invoices_total",
                "Invoices entering a status",
                &["status"],
            ),
            cache_requests_total: counter(
                &r,
                "bss_cache_requests_total",
                "Cache lookups",
                &["cache", "result"],
            ),
            cache_invalidations_total: counter(
                &r,
                "bss_cache_invalidations_total",
                "Cache invalidations received from the database",
                &["table"],
            ),
            cache_loads_total: counter(
                &r,
                "bss_cache_loads_total",
                "Database loads on cache misses (one per key at a time: single flight)",
                &["cache"],
            ),
            outbox_publish_failures_total: counter(
                &r,
                "bss_outbox_publish_failures_total",
                "Outbox batches that failed to publish",
                &["reason"],
            ),
            http_request_duration_seconds,
            outbox_pending,
            event_publish_duration_seconds,
            db_pool_connections,
            cache_enabled,
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
