//! SQL against the PostgreSQL members: connecting as bssctl's superuser, roles and slots
//! (`ensure_*`, idempotent), and the replication facts probes and failover read.

use std::time::Duration;

use postgres::{Client, Config, NoTls};
use serde::Serialize;

pub fn connect(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    timeout: Duration,
) -> Result<Client, String> {
    let mut c = Config::new();
    c.host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(timeout)
        .application_name("bssctl");
    // The driver's connect_timeout covers the TCP connect only: a stopped (SIGSTOP) server
    // accepts the connection in the kernel and never answers the startup packet. A thread with a
    // hard deadline keeps every probe bounded; a stuck attempt ends when the server's socket does.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.connect(NoTls).map_err(|e| describe(&e)));
    });
    match rx.recv_timeout(timeout + Duration::from_millis(250)) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {host}:{port} within {}ms",
            timeout.as_millis()
        )),
    }
}

/// Runs `f` on a fresh connection with a hard deadline on the whole exchange (connect and
/// queries): probes of a stalled server give up instead of hanging.
pub fn with_deadline<T: Send + 'static>(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    timeout: Duration,
    f: impl FnOnce(&mut Client) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (host, user, password) = (host.to_string(), user.to_string(), password.to_string());
    let target = format!("{host}:{port}");
    bounded(&target, timeout, move || {
        connect(&host, port, &user, &password, "postgres", timeout).and_then(|mut c| f(&mut c))
    })
}

/// Runs `f` on a thread of its own and waits for it at most `timeout` plus 300 ms; `target`
/// names what did not answer. A stuck `f` ends when the server's socket does.
pub fn bounded<T: Send + 'static>(
    target: &str,
    timeout: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout + Duration::from_millis(300))
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {target} within {}ms",
                timeout.as_millis()
            ))
        })
}

/// `pg_promote()` waiting up to `wait_seconds`; true when the server left recovery.
pub fn promote(c: &mut Client, wait_seconds: i32) -> Result<bool, String> {
    c.query_one("SELECT pg_promote(true, $1)", &[&wait_seconds])
        .map(|r| r.get(0))
        .map_err(|e| describe(&e))
}

/// The primary's current WAL insert position as a number.
pub fn current_lsn(c: &mut Client) -> Result<u64, String> {
    c.query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .map(|r| r.get::<_, i64>(0) as u64)
        .map_err(|e| describe(&e))
}

/// A postgres error with its server message (the Display of postgres::Error is terse).
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(e);
            while let Some(c) = cur {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cur = c.source();
            }
            s
        }
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Creates or corrects a login role; `replication` adds the REPLICATION attribute. The password is
/// set on every call (rotation) as a SCRAM-SHA-256 verifier computed here, so the value itself
/// never travels to the server or into its logs; statements are not echoed in errors either.
pub fn ensure_role(
    c: &mut Client,
    name: &str,
    password: &str,
    replication: bool,
) -> Result<(), String> {
    let exists = c
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .map_err(|e| describe(&e))?
        .is_some();
    let attrs = if replication {
        "LOGIN REPLICATION"
    } else {
        "LOGIN"
    };
    let verb = if exists { "ALTER" } else { "CREATE" };
    c.batch_execute(&format!(
        "{verb} ROLE {} WITH {attrs} PASSWORD {}",
        ident(name),
        literal(&postgres_protocol::password::scram_sha_256(
            password.as_bytes()
        ))
    ))
    .map_err(|e| {
        format!(
            "failed to {} role {name}: {}",
            verb.to_lowercase(),
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| "connection error".into())
        )
    })
}

pub fn ensure_database(c: &mut Client, name: &str, owner: &str) -> Result<(), String> {
    let exists = c
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .map_err(|e| describe(&e))?
        .is_some();
    if !exists {
        c.batch_execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            ident(name),
            ident(owner)
        ))
        .map_err(|e| describe(&e))?;
    }
    Ok(())
}

pub fn ensure_slot(c: &mut Client, slot: &str) -> Result<bool, String> {
    let exists = c
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(|e| describe(&e))?
        .is_some();
    if !exists {
        c.query(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&slot],
        )
        .map_err(|e| describe(&e))?;
    }
    Ok(!exists)
}

/// Drops a slot if present (its replica was removed). Inactive slots only; an active one means a
/// replica still streams and is left alone.
pub fn drop_slot(c: &mut Client, slot: &str) -> Result<bool, String> {
    let row = c
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(|e| describe(&e))?;
    match row {
        Some(r) if !r.get::<_, bool>(0) => {
            c.query("SELECT pg_drop_replication_slot($1)", &[&slot])
                .map_err(|e| describe(&e))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub fn in_recovery(c: &mut Client) -> Result<bool, String> {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .map(|r| r.get(0))
        .map_err(|e| describe(&e))
}

/// One row of pg_stat_replication as seen on the primary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicaStat {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub sent_lsn: Option<String>,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// WAL written on the primary and not yet replayed by this replica.
    pub lag_bytes: Option<i64>,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    /// WAL the replica's slot holds back on the primary (bytes).
    pub slot_retained_bytes: Option<i64>,
}

pub fn replication(c: &mut Client) -> Result<Vec<ReplicaStat>, String> {
    let rows = c
        .query(
            "SELECT r.application_name, r.state, r.sync_state, r.sent_lsn::text, r.write_lsn::text, \
             r.flush_lsn::text, r.replay_lsn::text, (pg_current_wal_lsn() - r.replay_lsn)::bigint, \
             extract(epoch from r.write_lag)::float8, extract(epoch from r.flush_lag)::float8, \
             extract(epoch from r.replay_lag)::float8, \
             (SELECT (pg_current_wal_lsn() - s.restart_lsn)::bigint FROM pg_replication_slots s \
               WHERE s.active_pid = r.pid LIMIT 1) \
             FROM pg_stat_replication r ORDER BY r.application_name",
            &[],
        )
        .map_err(|e| describe(&e))?;
    Ok(rows
        .iter()
        .map(|r| ReplicaStat {
            application_name: r.get(0),
            state: r.get::<_, Option<String>>(1).unwrap_or_default(),
            sync_state: r.get::<_, Option<String>>(2).unwrap_or_default(),
            sent_lsn: r.get(3),
            write_lsn: r.get(4),
            flush_lsn: r.get(5),
            replay_lsn: r.get(6),
            lag_bytes: r.get(7),
            write_lag_seconds: r.get(8),
            flush_lag_seconds: r.get(9),
            replay_lag_seconds: r.get(10),
            slot_retained_bytes: r.get(11),
        })
        .collect())
}

/// On a replica: received and replayed LSN (as numbers) and seconds since the last replayed commit.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct StandbyStat {
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replay_delay_seconds: Option<f64>,
    pub wal_receiver_status: Option<String>,
    /// Seconds since the WAL receiver last heard from its primary (None without a receiver).
    pub last_msg_age_seconds: Option<f64>,
    /// Port of the primary the WAL receiver is connected to.
    pub sender_port: Option<i32>,
}

pub fn standby(c: &mut Client) -> Result<StandbyStat, String> {
    let r = c
        .query_one(
            "SELECT (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint, (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, \
             CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                  ELSE extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 END, \
             (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
             (SELECT extract(epoch from now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver LIMIT 1), \
             (SELECT sender_port FROM pg_stat_wal_receiver LIMIT 1)",
            &[],
        )
        .map_err(|e| describe(&e))?;
    Ok(StandbyStat {
        receive_lsn: r.get::<_, Option<i64>>(0).map(|x| x as u64),
        replay_lsn: r.get::<_, Option<i64>>(1).map(|x| x as u64),
        replay_delay_seconds: r.get(2),
        wal_receiver_status: r.get(3),
        last_msg_age_seconds: r.get(4),
        sender_port: r.get(5),
    })
}

/// Errors PostgreSQL found in its config files after a reload (pg_file_settings).
pub fn config_errors(c: &mut Client) -> Result<Vec<String>, String> {
    let rows = c
        .query("SELECT coalesce(name, '?') || ': ' || error FROM pg_file_settings WHERE error IS NOT NULL", &[])
        .map_err(|e| describe(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
