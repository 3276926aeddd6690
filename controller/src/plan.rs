//! Plan: the difference between the rendered bundle and the last applied one, as data.
//!
//! Per component one action (none, create, reload, restart, recreate, remove), the reason, and a
//! unified diff of every changed file. Pure: the applied bundle and the secret values used for
//! redaction are passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use similar::TextDiff;

use crate::render::{Bundle, ComponentBundle, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    None,
    Create,
    Reload,
    Restart,
    Recreate,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Create => "create",
            Action::Reload => "reload",
            Action::Restart => "restart",
            Action::Recreate => "recreate",
            Action::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    pub path: String,
    /// Unified diff, secrets redacted.
    pub diff: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentPlan {
    pub name: String,
    pub kind: Kind,
    pub action: Action,
    pub reason: String,
    pub diffs: Vec<FileDiff>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Plan {
    /// Start order for create/reload/restart; removals last.
    pub components: Vec<ComponentPlan>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.components.iter().any(|c| c.action != Action::None)
    }

    pub fn changed(&self) -> impl Iterator<Item = &ComponentPlan> {
        self.components.iter().filter(|c| c.action != Action::None)
    }

    pub fn get(&self, name: &str) -> Option<&ComponentPlan> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Human-readable plan: a summary table, then the diffs.
    pub fn to_text(&self, diffs: bool) -> String {
        let mut out = String::new();
        let width = self
            .components
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(9)
            .max(9);
        let _ = writeln!(out, "{:<width$}  {:<8}  reason", "component", "action");
        for c in &self.components {
            let _ = writeln!(
                out,
                "{:<width$}  {:<8}  {}",
                c.name,
                c.action.as_str(),
                c.reason
            );
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in self.changed() {
            *counts.entry(c.action.as_str()).or_default() += 1;
        }
        if counts.is_empty() {
            let _ = writeln!(out, "\nNo changes: the environment matches the topology.");
        } else {
            let summary: Vec<String> = counts.iter().map(|(a, n)| format!("{n} to {a}")).collect();
            let _ = writeln!(out, "\nPlan: {}.", summary.join(", "));
        }
        if diffs {
            for c in self.changed() {
                for d in &c.diffs {
                    let _ = write!(out, "\n{}", d.diff);
                }
            }
        }
        out
    }
}

/// PostgreSQL parameters that need a server restart (`pg_settings.context = 'postmaster'` in
/// PostgreSQL 15, `postgres --describe-config`); the rest reload. A test compares this list with
/// the installed server, so a new restart-only parameter cannot be planned as a reload.
pub const PG_RESTART_PARAMS: &[&str] = &[
    "archive_mode",
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "bonjour",
    "bonjour_name",
    "cluster_name",
    "data_directory",
    "data_sync_retry",
    "dynamic_shared_memory_type",
    "event_source",
    "external_pid_file",
    "hba_file",
    "hot_standby",
    "huge_page_size",
    "huge_pages",
    "ident_file",
    "jit_provider",
    "listen_addresses",
    "logging_collector",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "min_dynamic_shared_memory",
    "old_snapshot_threshold",
    "port",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "shared_buffers",
    "shared_memory_type",
    "shared_preload_libraries",
    "superuser_reserved_connections",
    "track_activity_query_size",
    "track_commit_timestamp",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_buffers",
    "wal_decode_buffer_size",
    "wal_level",
    "wal_log_hints",
];

/// Replaces secret values by `<redacted:NAME>`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<(String, String)>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut secrets: Vec<(String, String)> =
            values.into_iter().filter(|(_, v)| v.len() >= 4).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.1.len()));
        Redactor { secrets }
    }

    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (name, v) in &self.secrets {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), &format!("<redacted:{name}>"));
            }
        }
        out
    }
}

fn unified(path: &str, old: &str, new: &str, r: &Redactor) -> String {
    let (old, new) = (r.redact(old), r.redact(new));
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

/// Parses `key = value` lines of a postgresql.conf (values unquoted).
fn pg_params(conf: &str) -> BTreeMap<String, String> {
    conf.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') || l.is_empty() {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((
                k.trim().to_string(),
                v.trim().trim_matches('\'').to_string(),
            ))
        })
        .collect()
}

fn decide(name: &str, old: &ComponentBundle, new: &ComponentBundle) -> (Action, String) {
    if old.kind != new.kind {
        return (
            Action::Recreate,
            format!("kind changed from {:?} to {:?}", old.kind, new.kind),
        );
    }
    let changed: BTreeSet<&String> = old
        .files
        .keys()
        .chain(new.files.keys())
        .filter(|p| old.files.get(*p) != new.files.get(*p))
        .collect();
    let launch_changed = old.launch != new.launch;
    if changed.is_empty() && !launch_changed {
        return (Action::None, "up to date".into());
    }
    let files: Vec<&str> = changed.iter().map(|s| s.as_str()).collect();
    if launch_changed {
        return (
            Action::Restart,
            format!(
                "command line changed{}",
                if files.is_empty() {
                    String::new()
                } else {
                    format!("; files: {}", files.join(", "))
                }
            ),
        );
    }
    let list = files.join(", ");
    match new.kind {
        Kind::Postgres => {
            if changed.iter().any(|p| p.as_str() == "standby.signal") {
                return (Action::Restart, format!("{name} changes role"));
            }
            let o = pg_params(
                old.files
                    .get("postgresql.conf")
                    .map(String::as_str)
                    .unwrap_or(""),
            );
            let n = pg_params(
                new.files
                    .get("postgresql.conf")
                    .map(String::as_str)
                    .unwrap_or(""),
            );
            let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            let restart: Vec<&str> = keys
                .into_iter()
                .filter(|k| o.get(*k) != n.get(*k) && PG_RESTART_PARAMS.contains(&k.as_str()))
                .map(|k| k.as_str())
                .collect();
            if restart.is_empty() {
                (
                    Action::Reload,
                    format!("{list} changed; every changed parameter is reloadable"),
                )
            } else {
                (
                    Action::Restart,
                    format!("{} needs a restart", restart.join(", ")),
                )
            }
        }
        Kind::Haproxy => (
            Action::Reload,
            format!("{list} changed; seamless reload keeps connections"),
        ),
        Kind::Envoy => (
            Action::Reload,
            format!("{list} changed; hot restart drains the old process"),
        ),
        Kind::Prometheus | Kind::Alertmanager => {
            (Action::Reload, format!("{list} changed; /-/reload"))
        }
        Kind::Redis
        | Kind::KafkaStore
        | Kind::Kafka
        | Kind::Backend
        | Kind::StreamProcessor
        | Kind::NodeExporter
        | Kind::PostgresExporter
        | Kind::RedisExporter => (
            Action::Restart,
            format!("{list} changed; {name} reads its config at start"),
        ),
    }
}

/// Compares `desired` with `applied` (None: nothing applied yet).
pub fn plan(desired: &Bundle, applied: Option<&Bundle>, r: &Redactor) -> Plan {
    let empty = Bundle::default();
    let applied = applied.unwrap_or(&empty);
    let mut comps = Vec::new();
    for (name, new) in desired.ordered() {
        let cp = match applied.components.get(name) {
            None => ComponentPlan {
                name: name.clone(),
                kind: new.kind,
                action: Action::Create,
                reason: "new component".into(),
                diffs: new
                    .files
                    .iter()
                    .map(|(p, c)| FileDiff {
                        path: format!("{name}/{p}"),
                        diff: unified(&format!("{name}/{p}"), "", c, r),
                    })
                    .collect(),
            },
            Some(old) => {
                let (action, reason) = decide(name, old, new);
                let mut diffs = Vec::new();
                if action != Action::None {
                    let paths: BTreeSet<&String> =
                        old.files.keys().chain(new.files.keys()).collect();
                    for p in paths {
                        let (o, n) = (old.files.get(p), new.files.get(p));
                        if o != n {
                            let full = format!("{name}/{p}");
                            diffs.push(FileDiff {
                                diff: unified(
                                    &full,
                                    o.map(String::as_str).unwrap_or(""),
                                    n.map(String::as_str).unwrap_or(""),
                                    r,
                                ),
                                path: full,
                            });
                        }
                    }
                    if old.launch != new.launch {
                        let o =
                            serde_json::to_string_pretty(&old.launch).unwrap_or_default() + "\n";
                        let n =
                            serde_json::to_string_pretty(&new.launch).unwrap_or_default() + "\n";
                        let full = format!("{name}/(command line)");
                        diffs.push(FileDiff {
                            diff: unified(&full, &o, &n, r),
                            path: full,
                        });
                    }
                }
                ComponentPlan {
                    name: name.clone(),
                    kind: new.kind,
                    action,
                    reason,
                    diffs,
                }
            }
        };
        comps.push(cp);
    }
    let mut removed: Vec<(&String, &ComponentBundle)> = applied
        .ordered()
        .into_iter()
        .filter(|(n, _)| !desired.components.contains_key(*n))
        .collect();
    removed.reverse();
    for (name, old) in removed {
        comps.push(ComponentPlan {
            name: name.clone(),
            kind: old.kind,
            action: Action::Remove,
            reason: "no longer in the topology".into(),
            diffs: old
                .files
                .iter()
                .map(|(p, c)| FileDiff {
                    path: format!("{name}/{p}"),
                    diff: unified(&format!("{name}/{p}"), c, "", r),
                })
                .collect(),
        });
    }
    Plan { components: comps }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::render::Launch;

    fn comp(kind: Kind, files: &[(&str, &str)]) -> ComponentBundle {
        ComponentBundle {
            kind,
            files: files
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            launch: Launch::default(),
        }
    }

    #[test]
    fn postgres_reload_vs_restart() {
        let a = comp(
            Kind::Postgres,
            &[(
                "postgresql.conf",
                "work_mem = '4MB'\nshared_buffers = '128MB'\n",
            )],
        );
        let b = comp(
            Kind::Postgres,
            &[(
                "postgresql.conf",
                "work_mem = '8MB'\nshared_buffers = '128MB'\n",
            )],
        );
        let c = comp(
            Kind::Postgres,
            &[(
                "postgresql.conf",
                "work_mem = '4MB'\nshared_buffers = '256MB'\n",
            )],
        );
        assert_eq!(decide("postgres-0", &a, &b).0, Action::Reload);
        assert_eq!(decide("postgres-0", &a, &c).0, Action::Restart);
        assert_eq!(decide("postgres-0", &a, &a).0, Action::None);
    }

    /// Every parameter the installed PostgreSQL marks as restart-only (postmaster context).
    fn postmaster_params() -> BTreeSet<String> {
        let bin = crate::tools::find("postgres").unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new(bin)
            .arg("--describe-config")
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres --describe-config failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (name, context) = (f.next()?, f.next()?);
                (context == "postmaster").then(|| name.to_string())
            })
            .collect()
    }

    #[test]
    fn restart_list_is_the_servers_postmaster_context() {
        let server = postmaster_params();
        let ours: BTreeSet<String> = PG_RESTART_PARAMS.iter().map(|s| s.to_string()).collect();
        let missing: Vec<_> = server.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "restart-only parameters planned as reloads: {missing:?}"
        );
        let extra: Vec<_> = ours.difference(&server).collect();
        assert!(
            extra.is_empty(),
            "reloadable parameters planned as restarts: {extra:?}"
        );
    }

    /// After a failover or switchover a member keeps running with the settings of its old role
    /// until a reload: if a restart-only parameter differed between the roles, every later reload
    /// of it would be refused. Checked for every member of the root topology and the fixtures,
    /// against the installed server's own list.
    #[test]
    fn role_changes_change_no_restart_only_parameter() {
        let server = postmaster_params();
        let tera = crate::render::load_templates(None).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("topology.yaml")];
        let fixtures = root.join("controller/tests/fixtures/valid");
        for e in std::fs::read_dir(&fixtures).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
        let opts = crate::topology::ValidateOptions {
            base_dir: std::path::PathBuf::from("/etc/bssctl-test"),
            state_dir: Some(std::path::PathBuf::from("/var/lib/bssctl-test")),
            runtime: None,
        };
        let mut compared = 0;
        for f in files {
            let Ok(l) = crate::topology::load(&f, &opts) else {
                continue;
            };
            let Some(pg) = l.validated.postgres.as_ref() else {
                continue;
            };
            let renders: Vec<Bundle> = pg
                .members
                .iter()
                .map(|m| {
                    let t = l.validated.with_primary(&m.name).unwrap();
                    crate::render::render(&t, &tera).unwrap()
                })
                .collect();
            for m in &pg.members {
                for (a, b) in renders.iter().zip(renders.iter().skip(1)) {
                    let conf =
                        |x: &Bundle| pg_params(&x.components[&m.name].files["postgresql.conf"]);
                    let (o, n) = (conf(a), conf(b));
                    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
                    let differs: Vec<&&String> = keys
                        .iter()
                        .filter(|k| o.get(**k) != n.get(**k) && server.contains(k.as_str()))
                        .collect();
                    assert!(
                        differs.is_empty(),
                        "{}: {} renders restart-only {differs:?} differently by role",
                        f.display(),
                        m.name
                    );
                    compared += 1;
                }
            }
        }
        assert!(
            compared > 0,
            "no topology with postgres members was compared"
        );
    }

    #[test]
    fn create_remove_and_redaction() {
        let mut old = Bundle::default();
        old.components.insert(
            "redis".into(),
            comp(Kind::Redis, &[("redis.conf", "port 1\n")]),
        );
        let mut new = Bundle::default();
        new.components.insert(
            "haproxy".into(),
            comp(Kind::Haproxy, &[("haproxy.cfg", "pass hunter22\n")]),
        );
        let r = Redactor::new([("haproxy-stats-password".to_string(), "hunter22".to_string())]);
        let p = plan(&new, Some(&old), &r);
        assert_eq!(p.get("haproxy").unwrap().action, Action::Create);
        assert_eq!(p.get("redis").unwrap().action, Action::Remove);
        let text = p.to_text(true);
        assert!(!text.contains("hunter22"), "{text}");
        assert!(text.contains("<redacted:haproxy-stats-password>"));
        assert!(p.has_changes());
    }
}
