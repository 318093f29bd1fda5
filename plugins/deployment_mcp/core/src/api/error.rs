//! Why a request failed, as this API reports it. Handlers, extractors and the role layer return
//! [`ApiError`]; its [`IntoResponse`] is the one place it becomes the JSON error answer
//! ([`ErrorAnswer`]: `error`, `message`, and `field` when one field is at fault).

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use plugin_guest::Refusal;

use crate::wire::ErrorAnswer;
use crate::{
    coordinator::{DecisionError, StartError},
    environments::FieldError,
    persist::records::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: a field of the request is wrong.
    #[error("{0}")]
    BadField(FieldError),
    /// 401 without a key, 403 below the route's role (the guest runtime's wording).
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// 403: the caller's role may do this, but not to this deployment.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 403: a browser page of an origin the MCP endpoint does not accept.
    #[error("origin {0:?} may not call this endpoint; add it to mcp.allowed_origins if it should")]
    ForbiddenOrigin(String),
    /// 404: no such deployment or environment.
    #[error("no {what} {id:?}")]
    NotFound { what: &'static str, id: String },
    /// 404: no route has this path.
    #[error("no deployment endpoint at {0}")]
    NoRoute(String),
    /// 405, with the methods the path takes.
    #[error("{method} is not supported on {path}; use {}", allowed.join(" or "))]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: Vec<String>,
    },
    /// 409: the request conflicts with what is going on (`field` when one field is the cause).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        field: Option<&'static str>,
    },
    /// 423: a deployment window closes an environment of the trigger.
    #[error("environment {environment:?} is closed by deployment window {window:?}{}; wait, or trigger with \"override\": {{\"reason\": …}} as an admin", match .opens_at { Some(at) => format!(" until {at}"), None => String::new() })]
    WindowClosed {
        environment: String,
        window: String,
        opens_at: Option<crate::model::Timestamp>,
    },
    /// 422: well-formed, but it cannot be done.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 500: the store failed. The cause goes to the log; the caller gets a generic message.
    #[error("the deployment store could not be read or written; see the host log")]
    Store(StoreError),
    /// 500: work behind the answer failed (a task panicked). The cause goes to the log.
    #[error("the answer could not be computed; see the host log")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub(crate) fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: &str) -> ApiError {
        ApiError::NotFound {
            what,
            id: id.to_owned(),
        }
    }

    pub(crate) fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadField(FieldError::new(field, message))
    }
}

/// The machine code of an error answer, beside its body, for the audit entry of the call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl ApiError {
    /// The answer's status, error code and field at fault.
    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            ApiError::BadField(error) => (
                StatusCode::BAD_REQUEST,
                "invalid_field",
                Some(error.field.clone()),
            ),
            ApiError::Refused(refusal) => (
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN),
                refusal.code,
                None,
            ),
            ApiError::ForbiddenOrigin(_) => (StatusCode::FORBIDDEN, "forbidden_origin", None),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, *code, None),
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => {
                (StatusCode::NOT_FOUND, "not_found", None)
            }
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::Conflict { code, field, .. } => {
                (StatusCode::CONFLICT, *code, field.map(str::to_owned))
            }
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code, None),
            ApiError::WindowClosed { .. } => (StatusCode::LOCKED, "deployment_window_closed", None),
            ApiError::Store(cause) => {
                tracing::error!("store: {cause}");
                (StatusCode::INTERNAL_SERVER_ERROR, "store_error", None)
            }
            ApiError::Internal(cause) => {
                tracing::error!("internal: {cause}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", None)
            }
        }
    }

    /// The error code its answer carries (`environment_busy`, `deployment_window_closed`…).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, field) = self.parts();
        let (window, opens_at) = match &self {
            ApiError::WindowClosed {
                window, opens_at, ..
            } => (Some(window.clone()), *opens_at),
            _ => (None, None),
        };
        let answer = ErrorAnswer {
            error: code.to_owned(),
            message,
            field,
            window,
            opens_at,
        };
        let mut response = (status, Json(answer)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        if let ApiError::MethodNotAllowed { allowed, .. } = &self {
            if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        response
    }
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> ApiError {
        match error {
            StartError::BadField(error) => ApiError::BadField(error),
            StartError::Invalid { code, message } => ApiError::unprocessable(code, message),
            StartError::Busy {
                environment,
                deployment,
            } => ApiError::conflict(
                "environment_busy",
                format!("environment {environment:?} is already being deployed by {deployment}; wait for it or cancel it"),
            ),
            StartError::WindowClosed {
                environment,
                window,
                opens_at,
            } => ApiError::WindowClosed {
                environment,
                window,
                opens_at,
            },
            StartError::Superseded => ApiError::Conflict {
                code: "superseded",
                message: "another node handled this first; nothing was started".into(),
                field: None,
            },
            StartError::Store(error) => ApiError::Store(error),
        }
    }
}

impl From<DecisionError> for ApiError {
    fn from(error: DecisionError) -> ApiError {
        match error {
            DecisionError::NotFound(id) => ApiError::not_found("deployment", &id),
            error @ DecisionError::Wrong { .. } => {
                ApiError::conflict("wrong_state", error.to_string())
            }
            error @ DecisionError::Conflict(_) => {
                ApiError::conflict("decided_meanwhile", error.to_string())
            }
            DecisionError::Nothing(message) => {
                ApiError::unprocessable("nothing_to_roll_back", message)
            }
            DecisionError::Busy {
                environment,
                deployment,
            } => ApiError::from(StartError::Busy {
                environment,
                deployment,
            }),
            DecisionError::Store(error) => ApiError::Store(error),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> ApiError {
        ApiError::BadField(error)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::Store(error)
    }
}
