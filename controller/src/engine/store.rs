//! The state-store seam: what the controller keeps about an environment, apart from where its
//! components keep their data. The applied bundle and topology, secrets, the failover intent
//! and history, the members that must be rewound, and a change token for "a new apply landed".
//!
//! `FileStore` keeps it in the environment's state directory (local and Docker runtimes); a
//! Kubernetes store keeps the same things in the resource's status, Secrets and ConfigMaps.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::engine::failover::FailoverEvent;
use crate::state::{self, Applied, StateError};
use crate::topology::model::ValidatedTopology;

pub trait StateStore: Send + Sync {
    /// One secret's value (never logged).
    fn secret(&self, name: &str) -> Result<String, StateError>;
    fn applied(&self) -> Result<Option<Applied>, StateError>;
    fn write_applied(&self, a: &Applied) -> Result<(), StateError>;
    /// A token that changes whenever `write_applied` ran (mtime, resourceVersion, ...).
    fn applied_token(&self) -> Option<String>;
    /// The failover or switchover that is under way (written before anything is touched).
    fn intent(&self) -> Option<FailoverEvent>;
    fn set_intent(&self, ev: Option<&FailoverEvent>) -> Result<(), StateError>;
    /// Past failovers and switchovers, oldest first (at most 100).
    fn history(&self) -> Vec<FailoverEvent>;
    fn push_history(&self, ev: &FailoverEvent) -> Result<(), StateError>;
    /// A former primary that must be rewound before it may start as a replica.
    fn needs_rewind(&self, member: &str) -> bool;
    fn set_needs_rewind(&self, member: &str, on: bool) -> Result<(), StateError>;
}

/// The state directory of an environment (`<stateDir>/<name>/`).
pub struct FileStore {
    root: PathBuf,
    data: PathBuf,
    t: ValidatedTopology,
    /// Serialises read-modify-write of the history between the monitor and its rejoin threads.
    lock: Mutex<()>,
}

impl FileStore {
    pub fn new(t: &ValidatedTopology) -> FileStore {
        FileStore {
            root: PathBuf::from(&t.paths.root),
            data: PathBuf::from(&t.paths.data),
            t: t.clone(),
            lock: Mutex::new(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn intent_path(&self) -> PathBuf {
        self.root.join("failover-intent.json")
    }

    fn history_path(&self) -> PathBuf {
        self.root.join("failover-history.json")
    }

    /// Kept next to the member's data directory (outside `run/`), so `destroy --keep-data` does
    /// not forget it.
    fn rewind_path(&self, member: &str) -> PathBuf {
        self.data.join(format!("{member}.rewind"))
    }
}

fn parse_err(path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Parse {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

impl StateStore for FileStore {
    fn secret(&self, name: &str) -> Result<String, StateError> {
        state::secret_value(&self.t, name)
    }

    fn applied(&self) -> Result<Option<Applied>, StateError> {
        state::read_applied(&self.t)
    }

    fn write_applied(&self, a: &Applied) -> Result<(), StateError> {
        state::write_applied(&self.t, a)
    }

    fn applied_token(&self) -> Option<String> {
        let m = std::fs::metadata(state::applied_path(&self.t))
            .and_then(|m| m.modified())
            .ok()?;
        let d = m.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        Some(format!("{}.{}", d.as_secs(), d.subsec_nanos()))
    }

    fn intent(&self) -> Option<FailoverEvent> {
        std::fs::read_to_string(self.intent_path())
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    fn set_intent(&self, ev: Option<&FailoverEvent>) -> Result<(), StateError> {
        let p = self.intent_path();
        match ev {
            Some(ev) => {
                let json = serde_json::to_vec_pretty(ev).map_err(|e| parse_err(&p, e))?;
                state::write_atomic(&p, &json, 0o600)
            }
            None => match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StateError::Write {
                    path: p.display().to_string(),
                    source,
                }),
            },
        }
    }

    fn history(&self) -> Vec<FailoverEvent> {
        std::fs::read_to_string(self.history_path())
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    fn push_history(&self, e: &FailoverEvent) -> Result<(), StateError> {
        let _g = self.lock.lock();
        let mut h = self.history();
        h.retain(|x| x.id != e.id);
        h.push(e.clone());
        let n = h.len().saturating_sub(100);
        h.drain(..n);
        let p = self.history_path();
        let json = serde_json::to_vec_pretty(&h).map_err(|e| parse_err(&p, e))?;
        state::write_atomic(&p, &json, 0o600)
    }

    fn needs_rewind(&self, member: &str) -> bool {
        self.rewind_path(member).exists()
    }

    fn set_needs_rewind(&self, member: &str, on: bool) -> Result<(), StateError> {
        let p = self.rewind_path(member);
        if on {
            state::write_atomic(&p, b"", 0o600)
        } else {
            match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StateError::Write {
                    path: p.display().to_string(),
                    source,
                }),
            }
        }
    }
}
