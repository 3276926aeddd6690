//! PostgreSQL pools (write = primary via the HAProxy write port, read = the read port) and
//! the embedded migrations.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Session setting that marks the API's own connections: the cache-invalidation triggers skip
/// them (no `pg_notify` in the API's write transactions), because the backend invalidates the
/// cache itself right after each commit. See migration 0002.
pub const ORIGIN_OPTION: (&str, &str) = ("bss.origin", "api");

pub fn connect_options(url: &str, password: Option<&str>) -> Result<PgConnectOptions, sqlx::Error> {
    let mut o = PgConnectOptions::from_str(url)?.application_name("bss-backend");
    if let Some(p) = password {
        o = o.password(p);
    }
    Ok(o.disable_statement_logging())
}

/// A lazily connecting pool: the service starts (and reports not-ready) while the database is down.
pub fn pool(url: &str, password: Option<&str>, max: u32) -> Result<PgPool, sqlx::Error> {
    pool_with(url, password, max, Duration::from_secs(5), false)
}

/// The API's pools. `acquire_timeout` bounds how long a request may queue for a connection
/// (beyond it the request fails fast with 503 instead of piling up); `api_origin` marks the
/// sessions so the triggers leave cache invalidation to the backend. Connections are not
/// pinged before each use (`test_before_acquire`): that was one extra round trip per request,
/// and a dead connection surfaces as an error on first use anyway.
pub fn pool_with(
    url: &str,
    password: Option<&str>,
    max: u32,
    acquire_timeout: Duration,
    api_origin: bool,
) -> Result<PgPool, sqlx::Error> {
    let mut opts = connect_options(url, password)?;
    if api_origin {
        opts = opts.options([ORIGIN_OPTION]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(!api_origin)
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(opts))
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
