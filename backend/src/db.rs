//! PostgreSQL pools (write = primary via the HAProxy write port, read = the read port) and
//! the embedded migrations.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub fn connect_options(url: &str, password: Option<&str>) -> Result<PgConnectOptions, sqlx::Error> {
    let mut o = PgConnectOptions::from_str(url)?.application_name("bss-backend");
    if let Some(p) = password {
        o = o.password(p);
    }
    Ok(o.disable_statement_logging())
}

/// A lazily connecting pool: the service starts (and reports not-ready) while the database is down.
pub fn pool(url: &str, password: Option<&str>, max: u32) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(connect_options(url, password)?))
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
