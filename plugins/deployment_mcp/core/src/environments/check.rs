//! The checks an environment's fields go through; each names the field at fault in a
//! [`FieldError`] (with its path for nested values).

pub use crate::model::FieldError;

/// Bounds of `timeout`, in seconds.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;

pub(super) use crate::model::MAX_ID_LEN;
const MAX_TEXT_LEN: usize = 4096;
pub(super) const MAX_TAGS: usize = 64;
/// Most variables an environment's `env` may set.
pub(super) const MAX_ENV: usize = 64;

/// Checks an environment id (see [`EnvironmentId`](crate::model::EnvironmentId)).
pub fn check_id(id: &str) -> Result<(), FieldError> {
    crate::model::EnvironmentId::parse(id).map(|_| ())
}

pub(super) fn required<'a>(
    value: &'a Option<String>,
    field: &str,
    method: &str,
) -> Result<&'a str, FieldError> {
    match value.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(FieldError::new(
            field,
            format!("is required for connection_method {method:?}"),
        )),
    }
}

/// An argument vector: a non-empty list whose first item names the program.
pub(super) fn check_argv(field: &str, argv: &[String]) -> Result<(), FieldError> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err(FieldError::new(
            field,
            "must be a non-empty list whose first item is the program to run",
        ));
    }
    if argv.iter().any(|part| part.contains('\0')) {
        return Err(FieldError::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

pub(super) fn check_host(host: &str) -> Result<(), FieldError> {
    let valid = host.len() <= 253
        && !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            "host",
            format!("{host:?} is not a host name or IP address"),
        ))
    }
}

pub(super) fn check_url(field: &str, text: &str) -> Result<(), FieldError> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) => Err(FieldError::new(
            field,
            format!(
                "{text:?} must be an http:// or https:// URL with a host (scheme was {:?})",
                url.scheme()
            ),
        )),
        Err(error) => Err(FieldError::new(
            field,
            format!("{text:?} is not a URL: {error}"),
        )),
    }
}

pub(super) fn check_text(field: &str, value: &Option<String>) -> Result<(), FieldError> {
    match value {
        Some(text) if text.len() > MAX_TEXT_LEN => Err(FieldError::new(
            field,
            format!("is {} bytes long; at most {MAX_TEXT_LEN}", text.len()),
        )),
        Some(text) if text.contains('\0') => {
            Err(FieldError::new(field, "must not contain NUL characters"))
        }
        _ => Ok(()),
    }
}

pub(super) fn secrets_not_empty(
    api_token: Option<&str>,
    webhook_secret: Option<&str>,
) -> Result<(), FieldError> {
    for (field, value) in [("api_token", api_token), ("webhook_secret", webhook_secret)] {
        if value.is_some_and(|value| value.trim().is_empty()) {
            return Err(FieldError::new(
                field,
                "must not be empty; omit it to send requests without one",
            ));
        }
    }
    Ok(())
}

/// Deserializes a request body that must be a JSON object; errors name the field.
pub fn from_json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| FieldError::new("body", format!("malformed JSON: {error}")))?;
    if !value.is_object() {
        return Err(FieldError::new("body", "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value)
        .map_err(|error| field_error(error.path().to_string(), error.inner().to_string()))
}

/// A serde error as a field error: `.` is serde's name for "the document itself". A missing
/// field's path is the object it is missing from; an unknown field's path already ends with
/// the field.
pub fn field_error(path: String, message: String) -> FieldError {
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned())
    };
    // An unknown field's path names it already, except at the top level, where it is `.`.
    let missing = named("missing field `")
        .or_else(|| (path == ".").then(|| named("unknown field `")).flatten());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => name,
        (".", None) => "body".to_owned(),
        (_, Some(name)) => format!("{path}.{name}"),
        (_, None) => path,
    };
    FieldError::new(field, message)
}
