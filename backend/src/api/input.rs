//! Request parsing that reports every bad field at once: JSON bodies are read into a
//! `serde_json::Value` and each field is checked by `Fields`, collecting `FieldError`s.

use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

use crate::error::{ApiResult, AppError, FieldError};

/// Parses a JSON object body; 415 without a JSON content type, 400 for invalid JSON.
pub fn json_object(headers: &HeaderMap, body: &Bytes) -> ApiResult<Map<String, Value>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(AppError::UnsupportedMediaType);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AppError::field("body", "must be a JSON object")),
        Err(e) => Err(AppError::Malformed(format!("invalid JSON: {e}"))),
    }
}

/// Field-by-field reader over a JSON object (or query map) that accumulates errors.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    errors: Vec<FieldError>,
    known: Vec<String>,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Self::nested(obj, String::new())
    }

    pub fn nested(obj: &'a Map<String, Value>, prefix: String) -> Self {
        Fields {
            obj,
            prefix,
            errors: Vec::new(),
            known: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    pub fn error(&mut self, name: &str, msg: impl Into<String>) {
        let field = self.path(name);
        self.errors.push(FieldError {
            field,
            message: msg.into(),
        });
    }

    pub fn extend(&mut self, errs: Vec<FieldError>) {
        self.errors.extend(errs);
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Raw access: `None` when absent or null.
    pub fn raw(&mut self, name: &str) -> Option<&'a Value> {
        self.known.push(name.to_string());
        match self.obj.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn get<T: DeserializeOwned>(&mut self, name: &str, required: bool, what: &str) -> Option<T> {
        match self.raw(name) {
            None => {
                if required {
                    self.error(name, "is required");
                }
                None
            }
            Some(v) => match serde_json::from_value::<T>(v.clone()) {
                Ok(t) => Some(t),
                Err(_) => {
                    self.error(name, format!("must be {what}"));
                    None
                }
            },
        }
    }

    pub fn string(&mut self, name: &str, required: bool, max: usize) -> Option<String> {
        let s: String = self.get(name, required, "a string")?;
        let t = s.trim().to_string();
        if t.is_empty() {
            self.error(name, "must not be blank");
            return None;
        }
        if t.chars().count() > max {
            self.error(name, format!("must be at most {max} characters"));
            return None;
        }
        if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') || t.contains('\u{0}') {
            self.error(name, "must not contain control characters");
            return None;
        }
        Some(t)
    }

    pub fn boolean(&mut self, name: &str, required: bool) -> Option<bool> {
        self.get(name, required, "a boolean")
    }

    pub fn int(&mut self, name: &str, required: bool, min: i64, max: i64) -> Option<i64> {
        let v: i64 = self.get(name, required, "an integer")?;
        if v < min || v > max {
            self.error(name, format!("must be between {min} and {max}"));
            return None;
        }
        Some(v)
    }

    /// Decimal given as a JSON string (`"12.50"`) or number; at most `max_scale` decimal places.
    pub fn decimal(
        &mut self,
        name: &str,
        required: bool,
        min: Decimal,
        max: Decimal,
        min_exclusive: bool,
        max_scale: u32,
    ) -> Option<Decimal> {
        let v = match self.raw(name) {
            None => {
                if required {
                    self.error(name, "is required");
                }
                return None;
            }
            Some(v) => v,
        };
        let parsed = match v {
            Value::String(s) => parse_decimal(s),
            Value::Number(n) => parse_decimal(&n.to_string()),
            _ => None,
        };
        let Some(d) = parsed else {
            self.error(name, "must be a decimal number such as \"12.50\"");
            return None;
        };
        if d.normalize().scale() > max_scale {
            self.error(
                name,
                format!("must have at most {max_scale} decimal places"),
            );
            return None;
        }
        let low_ok = if min_exclusive { d > min } else { d >= min };
        if !low_ok || d > max {
            let op = if min_exclusive { ">" } else { ">=" };
            self.error(name, format!("must be {op} {min} and <= {max}"));
            return None;
        }
        Some(d.normalize())
    }

    pub fn uuid(&mut self, name: &str, required: bool) -> Option<Uuid> {
        let s: String = self.get(name, required, "a UUID string")?;
        match Uuid::parse_str(&s) {
            Ok(u) => Some(u),
            Err(_) => {
                self.error(name, "must be a UUID");
                None
            }
        }
    }

    pub fn date(&mut self, name: &str, required: bool) -> Option<NaiveDate> {
        let s: String = self.get(name, required, "a date (YYYY-MM-DD)")?;
        match NaiveDate::from_str(&s) {
            Ok(d) if (1900..=2200).contains(&chrono::Datelike::year(&d)) => Some(d),
            _ => {
                self.error(name, "must be a date (YYYY-MM-DD) between 1900 and 2200");
                None
            }
        }
    }

    /// One of a closed set of values.
    pub fn enumeration<T>(
        &mut self,
        name: &str,
        required: bool,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Option<T> {
        let s: String = self.get(name, required, "a string")?;
        match parse(&s) {
            Some(t) => Some(t),
            None => {
                self.error(name, format!("must be one of: {allowed}"));
                None
            }
        }
    }

    /// One of the values of a `string_enum!` type.
    pub fn one_of<T: crate::domain::StringEnum>(
        &mut self,
        name: &str,
        required: bool,
    ) -> Option<T> {
        let allowed = T::allowed_values();
        self.enumeration(name, required, T::parse, &allowed)
    }

    pub fn array(&mut self, name: &str, required: bool) -> Option<&'a Vec<Value>> {
        match self.raw(name) {
            None => {
                if required {
                    self.error(name, "is required");
                }
                None
            }
            Some(Value::Array(a)) => Some(a),
            Some(_) => {
                self.error(name, "must be an array");
                None
            }
        }
    }

    pub fn object(&mut self, name: &str) -> Option<&'a Map<String, Value>> {
        match self.raw(name) {
            None => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                self.error(name, "must be an object");
                None
            }
        }
    }

    /// Fails with every collected error, including unknown fields.
    pub fn finish(mut self) -> Result<(), Vec<FieldError>> {
        let unknown: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !self.known.iter().any(|n| n == *k))
            .cloned()
            .collect();
        for k in unknown {
            self.error(&k, "is not a known field");
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }

    pub fn into_result(self) -> ApiResult<()> {
        self.finish().map_err(AppError::Validation)
    }
}

pub fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 24
        && s.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || c == '.' || (c == '-' && i == 0))
        && s.matches('.').count() <= 1
        && !s.ends_with('.')
        && !s.starts_with('.')
        && !s.starts_with("-.");
    if !ok {
        return None;
    }
    Decimal::from_str(s).ok()
}

/// Parses a path id; an id that is not a UUID is reported as a bad field.
pub fn path_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| AppError::field("id", "must be a UUID"))
}

/// Query-string reader with the same all-errors-at-once behaviour.
pub struct QueryFields<'a> {
    map: &'a HashMap<String, String>,
    pub errors: Vec<FieldError>,
}

impl<'a> QueryFields<'a> {
    pub fn new(map: &'a HashMap<String, String>) -> Self {
        QueryFields {
            map,
            errors: Vec::new(),
        }
    }
    pub fn error(&mut self, name: &str, msg: impl Into<String>) {
        self.errors.push(FieldError {
            field: name.to_string(),
            message: msg.into(),
        });
    }
    pub fn str(&self, name: &str) -> Option<&'a str> {
        self.map.get(name).map(String::as_str)
    }
    pub fn int(&mut self, name: &str, default: i64, min: i64, max: i64) -> i64 {
        match self.str(name) {
            None => default,
            Some(s) => match s.parse::<i64>() {
                Ok(v) if (min..=max).contains(&v) => v,
                _ => {
                    self.error(name, format!("must be an integer between {min} and {max}"));
                    default
                }
            },
        }
    }
    pub fn uuid(&mut self, name: &str) -> Option<Uuid> {
        let s = self.str(name)?;
        match Uuid::parse_str(s) {
            Ok(u) => Some(u),
            Err(_) => {
                self.error(name, "must be a UUID");
                None
            }
        }
    }
    pub fn datetime(&mut self, name: &str) -> Option<DateTime<Utc>> {
        let s = self.str(name)?;
        match DateTime::parse_from_rfc3339(s) {
            Ok(d) => Some(d.with_timezone(&Utc)),
            Err(_) => {
                self.error(name, "must be an RFC 3339 date-time");
                None
            }
        }
    }
    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        match self.str(name)? {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.error(name, "must be true or false");
                None
            }
        }
    }
    pub fn finish(self) -> ApiResult<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_every_bad_field() {
        let v = json!({"name": "", "price": "abc", "qty": 0, "extra": 1});
        let obj = v.as_object().unwrap();
        let mut f = Fields::new(obj);
        f.string("name", true, 10);
        f.decimal("price", true, Decimal::ZERO, Decimal::MAX, false, 2);
        f.int("qty", true, 1, 5);
        f.uuid("customerId", true);
        let errs = f.finish().unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["name", "price", "qty", "customerId", "extra"]);
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("0.10").unwrap().to_string(), "0.10");
        assert!(parse_decimal("1e5").is_none());
        assert!(parse_decimal("NaN").is_none());
        assert!(parse_decimal("1.").is_none());
    }
}
