//! `AppError`: every failure the HTTP API can report, rendered as RFC 7807 problem+json with a
//! stable `code`. Internal errors are logged with their cause and never leak it to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

use crate::domain::RuleViolation;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// RFC 7807 problem details, extended with `code` and `errors`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable error code.
    pub code: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("route not found")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Rule(#[from] RuleViolation),
    #[error("stale version: expected {expected}, current {current}")]
    StaleVersion { expected: i64, current: i64 },
    #[error("conflict: {0}")]
    Duplicate(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("broken reference: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    BrokenReference(Vec<FieldError>),
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    #[error("missing API key")]
    Unauthenticated,
    #[error("invalid API key")]
    Forbidden,
    #[error("too many requests")]
    TooManyRequests,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// A copy of an error shared by several waiters (a single-flight load): the status and
    /// code survive, internal causes are not repeated.
    pub fn shared(e: &AppError) -> Self {
        match e {
            AppError::Unavailable(m) => AppError::Unavailable(m.clone()),
            AppError::TooManyRequests => AppError::TooManyRequests,
            AppError::NotFound { entity, id } => AppError::NotFound {
                entity,
                id: id.clone(),
            },
            other => AppError::Internal(other.to_string()),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        AppError::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Validation(_) | AppError::Malformed(_) => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::NotFound { .. } | AppError::NoRoute => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Rule(_)
            | AppError::StaleVersion { .. }
            | AppError::Duplicate(_)
            | AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::BrokenReference(_) | AppError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AppError::Forbidden => StatusCode::FORBIDDEN,
            AppError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Validation(_) => "VALIDATION_FAILED",
            AppError::Malformed(_) => "MALFORMED_REQUEST",
            AppError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            AppError::NotFound { .. } => "NOT_FOUND",
            AppError::NoRoute => "ROUTE_NOT_FOUND",
            AppError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            AppError::Rule(RuleViolation::IllegalTransition { .. }) => "ILLEGAL_TRANSITION",
            AppError::Rule(RuleViolation::ReadOnly { .. }) => "READ_ONLY",
            AppError::StaleVersion { .. } => "STALE_VERSION",
            AppError::Duplicate(_) => "DUPLICATE",
            AppError::Conflict(_) => "CONFLICT",
            AppError::BrokenReference(_) => "BROKEN_REFERENCE",
            AppError::Unprocessable(_) => "UNPROCESSABLE",
            AppError::Unauthenticated => "UNAUTHENTICATED",
            AppError::Forbidden => "FORBIDDEN",
            AppError::TooManyRequests => "RATE_LIMITED",
            AppError::Unavailable(_) => "UNAVAILABLE",
            AppError::Internal(_) => "INTERNAL",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            AppError::Internal(_) => "an internal error occurred; it has been logged".to_string(),
            other => other.to_string(),
        };
        let errors = match self {
            AppError::Validation(e) | AppError::BrokenReference(e) => e.clone(),
            _ => Vec::new(),
        };
        Problem {
            type_: format!(
                "https://bss.example/problems/{}",
                self.code().to_lowercase().replace('_', "-")
            ),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail,
            code: self.code().to_string(),
            errors,
        }
    }
}

/// `Retry-After` of shed (429) and unavailable (503) responses: overload and failover both
/// clear within about a second here.
pub const RETRY_AFTER_SECONDS: &str = "1";

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // unique_violation
                Some("23505") => {
                    let what = db.constraint().unwrap_or("unique key").to_string();
                    return AppError::Duplicate(format!("a row with the same {what} exists"));
                }
                // foreign_key_violation
                Some("23503") => {
                    return AppError::Conflict(
                        "the row is referenced by or references another row".into(),
                    )
                }
                // check_violation, numeric_value_out_of_range, string too long
                Some("23514") | Some("22003") | Some("22001") => {
                    return AppError::field(
                        db.constraint().unwrap_or("body"),
                        "value out of the allowed range",
                    )
                }
                // serialization failure / deadlock: the client may retry
                Some("40001") | Some("40P01") => {
                    return AppError::Conflict("concurrent update, retry".into())
                }
                _ => {}
            }
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                AppError::Unavailable("database unavailable".into())
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(cause) = &self {
            tracing::error!(%cause, "request failed with an internal error");
        }
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (self.status(), body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, AppError::TooManyRequests | AppError::Unavailable(_)) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        if matches!(self, AppError::Unauthenticated) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, AppError>;
