//! Replay of a topic between two instants, entity state at an instant and timelines, and
//! consumer-group offset snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Jobs {
    pub inner: Arc<Mutex<HashMap<uuid::Uuid, serde_json::Value>>>,
}
