//! Open-loop load generator. Requests are scheduled at a fixed arrival rate and each latency is
//! measured from its *scheduled* start, so a slow server cannot slow the generator down and
//! hide its own latency (no coordinated omission). The mix follows the seeds: customer, order,
//! invoice and payment flows plus reads.

use clap::Args as ClapArgs;
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::config::Config;

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Base URL of the backend (directly, or through Envoy). Default: the config's `listen`.
    #[arg(long)]
    pub target: Option<String>,
    /// API key (default: BSS_LOADGEN_API_KEY, else the first key of the config's apiKeysFile).
    #[arg(long, env = "BSS_LOADGEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Arrival rate, requests per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Warm-up before measuring, seconds (same rate, not recorded).
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Requests in flight above which new arrivals are counted as `client_overload` errors.
    #[arg(long, default_value_t = 20000)]
    pub max_in_flight: usize,
    /// Customers created before the run.
    #[arg(long, default_value_t = 50)]
    pub seed_customers: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    CreateCustomer,
    CreateOrder,
    AdvanceOrder,
    CreateInvoice,
    SendInvoice,
    CreatePayment,
    CompletePayment,
    GetCustomer,
    GetOrder,
    ListCustomerOrders,
}

/// The seeds' mix, in percent (sums to 100).
const MIX: &[(Op, u32)] = &[
    (Op::CreateCustomer, 10),
    (Op::CreateOrder, 15),
    (Op::AdvanceOrder, 10),
    (Op::CreateInvoice, 8),
    (Op::SendInvoice, 7),
    (Op::CreatePayment, 8),
    (Op::CompletePayment, 7),
    (Op::GetCustomer, 15),
    (Op::GetOrder, 10),
    (Op::ListCustomerOrders, 10),
];

impl Op {
    fn pick(r: u32) -> Op {
        let mut acc = 0;
        for (op, w) in MIX {
            acc += w;
            if r < acc {
                return *op;
            }
        }
        Op::GetCustomer
    }
    fn is_write(self) -> bool {
        !matches!(
            self,
            Op::GetCustomer | Op::GetOrder | Op::ListCustomerOrders
        )
    }
}

#[derive(Clone)]
struct Ent {
    id: String,
    version: i64,
    status: String,
    customer: String,
    total: String,
}

#[derive(Default)]
struct Pools {
    customers: Vec<String>,
    products: Vec<String>,
    orders: Vec<Ent>,
    invoices: Vec<Ent>,
    payable: Vec<Ent>,
    payments: Vec<Ent>,
}

struct Shared {
    client: reqwest::Client,
    base: String,
    key: String,
    pools: Mutex<Pools>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub requested_rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub scheduled: u64,
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub achieved_rate: f64,
    pub writes_per_second: f64,
    pub latency_ms: Latency,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub ops: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

struct Outcome {
    op: Op,
    ok: bool,
    kind: Option<String>,
}

fn pick<T: Clone>(v: &[T], rng: &mut StdRng) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v[rng.gen_range(0..v.len())].clone())
    }
}

fn take<T>(v: &mut Vec<T>, rng: &mut StdRng) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        let i = rng.gen_range(0..v.len());
        Some(v.swap_remove(i))
    }
}

fn ent(v: &Value) -> Ent {
    Ent {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        version: v["version"].as_i64().unwrap_or(1),
        status: v["status"].as_str().unwrap_or_default().to_string(),
        customer: v["customerId"].as_str().unwrap_or_default().to_string(),
        total: v["totalAmount"]
            .as_str()
            .or_else(|| v["amount"].as_str())
            .unwrap_or("0")
            .to_string(),
    }
}

impl Shared {
    /// A request whose response body the flow needs (ids, versions of what it created).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let bytes = self.call_raw(method, path, body).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A request whose body is not needed beyond its status: the generator shares the 2 cores
    /// with the stack it measures, so it does not parse what it would throw away.
    async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<axum::body::Bytes, String> {
        let mut rb = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else if e.is_connect() {
                "connect".to_string()
            } else {
                "transport".to_string()
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|_| "transport".to_string())?;
        if status.is_success() {
            Ok(bytes)
        } else {
            let code = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["code"].as_str().map(String::from))
                .unwrap_or_default();
            Err(format!("http_{}_{}", status.as_u16(), code.to_lowercase()))
        }
    }

    async fn run(&self, mut op: Op, rng: &mut StdRng) -> Outcome {
        use reqwest::Method as M;
        // Transitions need an entity in the right state; without one, fall back to a create.
        let job = {
            let mut p = match self.pools.lock() {
                Ok(p) => p,
                Err(_) => {
                    return Outcome {
                        op,
                        ok: false,
                        kind: Some("client_state".into()),
                    }
                }
            };
            // Fall back along the flow until something can run.
            loop {
                let (pool, fallback) = match op {
                    Op::AdvanceOrder => (&mut p.orders, Op::CreateOrder),
                    Op::SendInvoice => (&mut p.invoices, Op::CreateInvoice),
                    Op::CompletePayment => (&mut p.payments, Op::CreatePayment),
                    Op::CreatePayment => (&mut p.payable, Op::CreateInvoice),
                    _ => break None,
                };
                match take(pool, rng) {
                    Some(e) => break Some(e),
                    None => op = fallback,
                }
            }
        };
        let (customer, product, order) = {
            let p = match self.pools.lock() {
                Ok(p) => p,
                Err(_) => {
                    return Outcome {
                        op,
                        ok: false,
                        kind: Some("client_state".into()),
                    }
                }
            };
            (
                pick(&p.customers, rng),
                pick(&p.products, rng),
                pick(&p.orders, rng),
            )
        };
        let n: u32 = rng.gen();
        let res = match op {
            Op::CreateCustomer => self
                .call(M::POST, "/api/v1/customers", Some(json!({
                    "firstName": "Load", "lastName": format!("Gen{n}"),
                    "email": format!("lg-{}@example.com", uuid::Uuid::new_v4().simple()),
                    "phone": "+49 170 1234567"})))
                .await
                .map(|v| {
                    if let Ok(mut p) = self.pools.lock() {
                        p.customers.push(ent(&v).id);
                    }
                }),
            Op::CreateOrder => match (customer, product) {
                (Some(c), Some(pr)) => self
                    .call(M::POST, "/api/v1/orders", Some(json!({
                        "customerId": c, "currency": "EUR", "priority": "NORMAL",
                        "items": [{"productId": pr, "quantity": 1 + n % 3, "taxRate": "0.19"}]})))
                    .await
                    .map(|v| {
                        if let Ok(mut p) = self.pools.lock() {
                            if p.orders.len() < 5000 {
                                p.orders.push(ent(&v));
                            }
                        }
                    }),
                _ => Err("client_no_data".into()),
            },
            Op::AdvanceOrder => {
                let Some(o) = job else { return Outcome { op, ok: false, kind: Some("client_no_data".into()) } };
                let next = match o.status.as_str() {
                    "PENDING" => "APPROVED",
                    "APPROVED" => "IN_PROGRESS",
                    "IN_PROGRESS" => "PROCESSING",
                    _ => "COMPLETED",
                };
                self.call(M::POST, &format!("/api/v1/orders/{}/status", o.id),
                    Some(json!({"status": next, "version": o.version})))
                    .await
                    .map(|v| {
                        let e = ent(&v);
                        if e.status != "COMPLETED" {
                            if let Ok(mut p) = self.pools.lock() {
                                p.orders.push(e);
                            }
                        }
                    })
            }
            Op::CreateInvoice => match customer {
                Some(c) => self
                    .call(M::POST, "/api/v1/invoices", Some(json!({
                        "customerId": c, "currency": "EUR", "dueDate": "2099-12-31", "invoiceType": "RECURRING",
                        "items": [{"description": "Monthly fee", "quantity": 1, "unitPrice": "29.99", "taxRate": "0.19"}]})))
                    .await
                    .map(|v| {
                        if let Ok(mut p) = self.pools.lock() {
                            if p.invoices.len() < 5000 {
                                p.invoices.push(ent(&v));
                            }
                        }
                    }),
                None => Err("client_no_data".into()),
            },
            Op::SendInvoice => {
                let Some(i) = job else { return Outcome { op, ok: false, kind: Some("client_no_data".into()) } };
                self.call(M::POST, &format!("/api/v1/invoices/{}/status", i.id),
                    Some(json!({"status": "SENT", "version": i.version})))
                    .await
                    .map(|v| {
                        if let Ok(mut p) = self.pools.lock() {
                            if p.payable.len() < 5000 {
                                p.payable.push(ent(&v));
                            }
                        }
                    })
            }
            Op::CreatePayment => {
                let Some(i) = job else { return Outcome { op, ok: false, kind: Some("client_no_data".into()) } };
                let method = ["CARD", "BANK_TRANSFER", "DIRECT_DEBIT", "MOBILE_PAY"][(n % 4) as usize];
                self.call(M::POST, "/api/v1/payments", Some(json!({
                    "customerId": i.customer, "invoiceId": i.id, "amount": i.total, "currency": "EUR", "method": method})))
                    .await
                    .map(|v| {
                        if let Ok(mut p) = self.pools.lock() {
                            if p.payments.len() < 5000 {
                                p.payments.push(ent(&v));
                            }
                        }
                    })
            }
            Op::CompletePayment => {
                let Some(pay) = job else { return Outcome { op, ok: false, kind: Some("client_no_data".into()) } };
                self.call_raw(M::POST, &format!("/api/v1/payments/{}/status", pay.id),
                    Some(json!({"status": "COMPLETED", "version": pay.version})))
                    .await
                    .map(|_| ())
            }
            Op::GetCustomer => match customer {
                Some(c) => self.call_raw(M::GET, &format!("/api/v1/customers/{c}"), None).await.map(|_| ()),
                None => Err("client_no_data".into()),
            },
            Op::GetOrder => match (order, customer) {
                (Some(o), _) => self.call_raw(M::GET, &format!("/api/v1/orders/{}", o.id), None).await.map(|_| ()),
                (None, Some(c)) => {
                    op = Op::GetCustomer;
                    self.call_raw(M::GET, &format!("/api/v1/customers/{c}"), None).await.map(|_| ())
                }
                _ => Err("client_no_data".into()),
            },
            Op::ListCustomerOrders => match customer {
                Some(c) => self
                    .call_raw(M::GET, &format!("/api/v1/customers/{c}/orders?size=10"), None)
                    .await
                    .map(|_| ()),
                None => Err("client_no_data".into()),
            },
        };
        match res {
            Ok(()) => Outcome {
                op,
                ok: true,
                kind: None,
            },
            Err(k) => Outcome {
                op,
                ok: false,
                kind: Some(k),
            },
        }
    }
}

/// Runs the load; returns the process exit code (0).
pub async fn run(args: Args, cfg: Option<Config>) -> anyhow::Result<i32> {
    let report = generate(&args, cfg.as_ref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(0)
}

fn print_human(r: &Report) {
    println!("target            {}", r.target);
    println!(
        "requested rate    {:.0}/s for {:.0}s (warm-up {:.0}s)",
        r.requested_rate, r.duration_s, r.warmup_s
    );
    println!(
        "achieved rate     {:.1}/s ({} of {} completed)",
        r.achieved_rate, r.completed, r.scheduled
    );
    println!("writes (events)   {:.1}/s", r.writes_per_second);
    println!(
        "latency ms        p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
        r.latency_ms.p50, r.latency_ms.p95, r.latency_ms.p99, r.latency_ms.max, r.latency_ms.mean
    );
    println!(
        "errors            {} ({:.3} %)",
        r.errors,
        r.error_rate * 100.0
    );
    for (k, v) in &r.errors_by_kind {
        println!("  {k:<40} {v}");
    }
}

pub async fn generate(args: &Args, cfg: Option<&Config>) -> anyhow::Result<Report> {
    let base = args
        .target
        .clone()
        .or_else(|| cfg.map(|c| format!("http://{}", c.listen)))
        .unwrap_or_else(|| "http://127.0.0.1:8080".into())
        .trim_end_matches('/')
        .to_string();
    let key = args
        .api_key
        .clone()
        .or_else(|| cfg.and_then(|c| c.auth.api_keys.first().cloned()))
        .ok_or_else(|| {
            anyhow::anyhow!("an API key is needed: --api-key, BSS_LOADGEN_API_KEY or --config")
        })?;
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "rate and duration must be > 0"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()?;
    let shared = Arc::new(Shared {
        client,
        base: base.clone(),
        key,
        pools: Mutex::new(Pools::default()),
    });
    // Set-up: products and customers the flows refer to.
    let mut rng = StdRng::seed_from_u64(args.seed);
    for i in 0..5 {
        let v = shared
            .call(reqwest::Method::POST, "/api/v1/products", Some(json!({
                "code": format!("LG-{}-{i}", uuid::Uuid::new_v4().simple()), "name": format!("Load plan {i}"),
                "productType": "TARIFF", "category": "MOBILE", "price": format!("{}.99", 9 + i * 10),
                "currency": "EUR", "billingPeriod": "MONTHLY"})))
            .await
            .map_err(|e| anyhow::anyhow!("set-up failed creating a product at {base}: {e}"))?;
        if let Ok(mut p) = shared.pools.lock() {
            p.products.push(ent(&v).id);
        }
    }
    for _ in 0..args.seed_customers {
        let _ = shared.run(Op::CreateCustomer, &mut rng).await;
    }

    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let ops: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let (completed, ok_count, writes, scheduled) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let in_flight = Arc::new(AtomicUsize::new(0));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut handles = Vec::new();
    let mut i: u64 = 0;
    loop {
        let at = start + interval.mul_f64(i as f64);
        if at >= end {
            break;
        }
        i += 1;
        tokio::time::sleep_until(at).await;
        let measured = at >= measure_from;
        if measured {
            scheduled.fetch_add(1, Ordering::Relaxed);
        }
        let op = Op::pick(rng.gen_range(0..100));
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            if measured {
                *errors
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .entry("client_overload".into())
                    .or_default() += 1;
                completed.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (shared, hist, errors, ops, completed, ok_count, writes, in_flight) = (
            shared.clone(),
            hist.clone(),
            errors.clone(),
            ops.clone(),
            completed.clone(),
            ok_count.clone(),
            writes.clone(),
            in_flight.clone(),
        );
        let seed = rng.gen::<u64>();
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let out = shared.run(op, &mut rng).await;
            // Latency from the scheduled start: includes any delay before the request was sent.
            let micros = at.elapsed().as_micros().max(1) as u64;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if !measured {
                return;
            }
            completed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut h) = hist.lock() {
                let _ = h.record(micros.min(600_000_000));
            }
            if let Ok(mut o) = ops.lock() {
                *o.entry(format!("{:?}", out.op)).or_default() += 1;
            }
            if out.ok {
                ok_count.fetch_add(1, Ordering::Relaxed);
                if out.op.is_write() {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            } else if let (Some(k), Ok(mut e)) = (out.kind, errors.lock()) {
                *e.entry(k).or_default() += 1;
            }
        }));
        if handles.len() > 10_000 {
            handles.retain(|h| !h.is_finished());
        }
    }
    for h in handles {
        let _ = h.await;
    }
    let wall = args.duration;
    let h = hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let errs = errors
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let n_err: u64 = errs.values().sum();
    let done = completed.load(Ordering::Relaxed);
    let ops_done = ops.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    Ok(Report {
        target: base,
        requested_rate: args.rate,
        duration_s: args.duration,
        warmup_s: args.warmup,
        scheduled: scheduled.load(Ordering::Relaxed),
        completed: done,
        ok: ok_count.load(Ordering::Relaxed),
        errors: n_err,
        error_rate: if done == 0 {
            0.0
        } else {
            n_err as f64 / done as f64
        },
        achieved_rate: ok_count.load(Ordering::Relaxed) as f64 / wall,
        writes_per_second: writes.load(Ordering::Relaxed) as f64 / wall,
        latency_ms: Latency {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        },
        errors_by_kind: errs,
        ops: ops_done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_sums_to_100_and_every_op_is_reachable() {
        assert_eq!(MIX.iter().map(|(_, w)| w).sum::<u32>(), 100);
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..100 {
            seen.insert(Op::pick(r));
        }
        assert_eq!(seen.len(), MIX.len());
    }
}
