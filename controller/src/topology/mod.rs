//! The topology: its document types, parsing with positions, validation into a `ValidatedTopology`.

pub mod model;
pub mod parse;
pub mod types;
pub mod validate;

pub use model::ValidatedTopology;
pub use types::Topology;
