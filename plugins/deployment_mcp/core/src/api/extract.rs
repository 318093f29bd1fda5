//! What handlers take from a request besides its body: the caller the host authenticated
//! ([`Who`]), the request id, the `{id}` path segment, the query parameters and the mount.

use std::convert::Infallible;

use axum::{extract::FromRequestParts, http::request::Parts};
use plugin_guest::{Caller, Role};

use super::ApiError;
use crate::{
    model::{DeploymentId, Timestamp},
    wire,
};

/// The caller the host authenticated, if any.
pub(crate) struct Who(pub(crate) Option<Caller>);

impl Who {
    /// Whether the caller may see what users may not (connection details, errors, output).
    pub(crate) fn view(&self) -> wire::View {
        match &self.0 {
            Some(caller) if caller.role >= Role::Developer => wire::View::Details,
            _ => wire::View::User,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.0.as_ref().map_or("", |caller| caller.name.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Who, Infallible> {
        Ok(Who(parts.extensions.get::<Caller>().cloned()))
    }
}

/// The host's id of the request, carried onto the deployment it starts and its log lines.
#[derive(Clone)]
pub(crate) struct RequestId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<RequestId, Infallible> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or(RequestId(String::new())))
    }
}

/// The `{id}` segment of a route's path. One that cannot be an id (not UTF-8 once decoded)
/// names nothing: 404, like any unknown id.
pub(crate) struct Id(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Id, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(Id(id)),
            Err(_) => Err(ApiError::NoRoute(parts.uri.path().to_owned())),
        }
    }
}

/// The `{id}` segment of a `/deployments/{id}…` route, checked: a segment that cannot be a
/// deployment id names none (404) and is never used as a store key.
pub(crate) struct DeploymentKey(pub(crate) DeploymentId);

impl<S: Send + Sync> FromRequestParts<S> for DeploymentKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<DeploymentKey, ApiError> {
        let Id(text) = Id::from_request_parts(parts, state).await?;
        DeploymentId::parse(&text)
            .map(DeploymentKey)
            .map_err(|_| ApiError::not_found("deployment", &text))
    }
}

/// The query's parameters, decoded as the host's other routes decode them (first value wins).
pub(crate) struct Params(pub(super) String);

impl Params {
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        plugin_guest::query_param(&self.0, name)
    }

    /// A number within `range`, `default` when absent; the error names the parameter.
    pub(crate) fn number(
        &self,
        name: &'static str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.parse::<usize>() {
            Ok(value) if range.contains(&value) => Ok(value),
            _ => Err(ApiError::field(
                name,
                format!(
                    "{text:?} is not a number between {} and {}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// `true` or `false`, `false` when absent; the error names the parameter.
    pub(crate) fn flag(&self, name: &'static str) -> Result<bool, ApiError> {
        match self.get(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(text) => Err(ApiError::field(
                name,
                format!("{text:?} is not true or false"),
            )),
        }
    }

    /// An RFC 3339 instant within ten years of `now`, `now` when absent; the error names the
    /// parameter. Bounded because every look at a rule walks it from its start.
    pub(crate) fn instant(
        &self,
        name: &'static str,
        now: Timestamp,
    ) -> Result<Timestamp, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(now);
        };
        let at = text
            .parse::<Timestamp>()
            .map_err(|error| ApiError::field(name, error.to_string()))?;
        if at.unix_ms().abs_diff(now.unix_ms()) > crate::calendar::TEN_YEARS_MS {
            return Err(ApiError::field(name, "must be within ten years of now"));
        }
        Ok(at)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Params, Infallible> {
        Ok(Params(parts.uri.query().unwrap_or_default().to_owned()))
    }
}

/// The mount the host serves this plugin under, for absolute links.
pub(crate) struct Mount(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Mount {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Mount, Infallible> {
        let mount = parts
            .headers
            .get("x-forwarded-prefix")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("/api/deployment")
            .trim_end_matches('/')
            .to_owned();
        Ok(Mount(mount))
    }
}
