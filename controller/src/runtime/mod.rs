//! Runtime implementations of the engine's `Runtime` trait. `local` (processes on this machine)
//! is the embedded default; `for_topology` picks the one a topology asks for.

pub mod agent_process;
pub mod local;
pub mod owned_root;
pub mod process;
pub mod users;

pub use crate::engine::runtime::RuntimeError;
pub use crate::progress::{open_journal, Event, JsonReporter, Reporter, TextReporter};

use crate::engine::runtime::Runtime;
use crate::topology::model::ValidatedTopology;
use crate::topology::types::RuntimeKind;

/// The runtime the topology's `spec.runtime.kind` names.
pub fn for_topology(t: &ValidatedTopology) -> Result<Box<dyn Runtime + Send>, RuntimeError> {
    match t.runtime {
        RuntimeKind::Local => Ok(Box::new(local::Local::new(t))),
        other => Err(RuntimeError::Unsupported(
            format!("{other:?}").to_lowercase(),
        )),
    }
}
