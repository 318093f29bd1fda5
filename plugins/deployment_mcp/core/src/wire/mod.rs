//! What goes out on the wire: the API's bodies (what handlers answer, what the CLI reads back and
//! what the OpenAPI document describes) and the role views events carry, one type each. They are built from the stored records
//! (`deployment`, `catalog`) by the `From`/`new` functions here, so a stored record can change
//! without changing an answer, and an answer without migrating the store.
//!
//! Role views: a caller with the user role sees what runs and how it does, never how an
//! environment is reached or what went wrong in detail (error texts, output, URLs name hosts,
//! paths and commands). Those fields are `Option`s that are absent from a user's answer.
//!
//! Code map: `requests` (what callers send), `deployments` (a deployment's entry, summary,
//! record, log page, history page), `overview` (status and dashboard), `environments`
//! (environment views, health), `events` (what is published); here the role [`View`], the
//! path parameters and the error answer every route shares.

/// `ToSchema` for an untagged enum: `anyOf` its variants' schemas. (The derive writes `oneOf`,
/// which a validator refuses when a value fits two variants: a deployment's summary also has a
/// `deployment_id` and a `status` string, like [`Cancelling`].)
macro_rules! any_of_schema {
    ($name:ident: $($variant:ty),+) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::AnyOfBuilder::new()
                    $(.item(<$variant as utoipa::PartialSchema>::schema()))+
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn schemas(
                schemas: &mut Vec<(
                    String,
                    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
                )>,
            ) {
                $(<$variant as utoipa::ToSchema>::schemas(schemas);)+
            }
        }
    };
}
pub(crate) use any_of_schema;

mod deployments;
mod environments;
mod events;
mod notifications;
mod overview;
mod requests;
mod schedules;
mod windows;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use deployments::*;
pub use environments::*;
pub use events::*;
pub use notifications::*;
pub use overview::*;
pub use requests::*;
pub use schedules::*;
pub use windows::*;

/// A field the user role may not see: `None` leaves it out of the answer, `Some(None)` is `null`
/// (what developers and admins get when there is nothing to show).
pub type Hidden<T> = Option<Option<T>>;

/// Whether a caller sees details (developers and admins) or the user view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    User,
    Details,
}

impl View {
    fn details(self) -> bool {
        self == View::Details
    }

    /// `value` for details, left out for users.
    fn hide<T>(self, value: Option<T>) -> Hidden<T> {
        self.details().then_some(value)
    }
}

/// The path parameter of `/deployments/{id}…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeploymentPath {
    /// Deployment id (`dep-<ms>-<8 hex>`).
    #[param(pattern = "^dep-[0-9]+-[0-9a-f]{8}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// The path parameter of `/schedules/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SchedulePath {
    /// Schedule id.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// The path parameter of `/windows/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WindowPath {
    /// Window id.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// The path parameter of `/environments/{id}…`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvironmentPath {
    /// Environment id.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    #[allow(dead_code)] // Read by the derive.
    id: String,
}

/// The error answer of every route: a code to branch on, a message to show, and the field at
/// fault when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorAnswer {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `deployment_window_closed`: the window that closes an environment of the trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// `deployment_window_closed`: when it opens (absent: not within 400 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub opens_at: Option<crate::model::Timestamp>,
}

#[cfg(test)]
mod tests;
