//! Why a call of the API failed, as the typed client reports it, and how an answer is read:
//! the expected status is the wire type, any other status the API's JSON error answer
//! (`api::error` makes it: `error`, `message`, `field`).

use std::fmt::Display;

use serde::de::DeserializeOwned;

use super::Reply;
use crate::wire::ErrorAnswer;

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The API answered with its error: the HTTP status, its machine code (`not_found`,
    /// `environment_busy`, …), its message, and the field at fault when one is.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// An answer of another status that does not carry the API's error (a proxy's, or not a
    /// deployment API at all).
    #[error("{operation} answered {status} without the API's JSON error")]
    NotApi { operation: String, status: u16 },
    /// A success answer this client cannot read (a client and a plugin of other releases).
    #[error("the answer to {operation} is not what this client reads ({detail})")]
    Decode { operation: String, detail: String },
    /// No answer from `server`: it could not be reached, or did not answer in time.
    #[error("cannot reach {server}: {detail}")]
    Unreachable { server: String, detail: String },
    /// No answer: the request could not be made, or the answer broke off.
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::NotApi { status, .. } => Some(*status),
            ClientError::Decode { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Transport(_) => None,
        }
    }

    /// The API's error code, when it answered with its error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The field at fault, when the API named one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// Reads `reply` to a call of `operation` (`GET /status`): `R` when its status is one of
/// `expected`, else the error it carries.
pub(super) fn read<R: DeserializeOwned>(
    operation: &impl Display,
    reply: Reply,
    expected: &[u16],
) -> Result<R, ClientError> {
    if expected.contains(&reply.status) {
        return serde_json::from_slice(&reply.body).map_err(|error| ClientError::Decode {
            operation: operation.to_string(),
            detail: error.to_string(),
        });
    }
    match serde_json::from_slice::<ErrorAnswer>(&reply.body) {
        Ok(answer) => Err(ClientError::Api {
            status: reply.status,
            code: answer.error,
            message: answer.message,
            field: answer.field,
        }),
        Err(_) => Err(ClientError::NotApi {
            operation: operation.to_string(),
            status: reply.status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::endpoints, wire::Accepted};

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_expected_status_is_the_wire_type() {
        let accepted: Accepted = read(
            &endpoints::TRIGGER,
            reply(
                202,
                r#"{"deployment_id": "dep-1-00000000", "status": "pending", "status_url": "/x"}"#,
            ),
            &[202],
        )
        .expect("read");
        assert_eq!(accepted.deployment_id, "dep-1-00000000");
    }

    #[test]
    fn another_status_is_the_apis_error_with_its_code_and_field() {
        let error = read::<Accepted>(
            &endpoints::TRIGGER,
            reply(
                400,
                r#"{"error": "invalid_field", "message": "strategy.type: unknown", "field": "strategy.type"}"#,
            ),
            &[202],
        )
        .expect_err("an error");
        assert_eq!(
            error,
            ClientError::Api {
                status: 400,
                code: "invalid_field".into(),
                message: "strategy.type: unknown".into(),
                field: Some("strategy.type".into()),
            }
        );
        assert_eq!(error.status(), Some(400));
        assert_eq!(error.code(), Some("invalid_field"));
        assert_eq!(error.field(), Some("strategy.type"));
        assert_eq!(error.to_string(), "strategy.type: unknown");
        let busy = read::<Accepted>(
            &endpoints::TRIGGER,
            reply(409, r#"{"error": "environment_busy", "message": "busy"}"#),
            &[202],
        )
        .expect_err("an error");
        assert_eq!((busy.status(), busy.field()), (Some(409), None));
    }

    #[test]
    fn what_is_not_the_apis_answer_says_so() {
        let error = read::<Accepted>(&endpoints::TRIGGER, reply(502, "<html>"), &[202])
            .expect_err("an error");
        assert_eq!(
            error,
            ClientError::NotApi {
                operation: "POST /trigger-local".into(),
                status: 502
            }
        );
        // An expected status whose body is not the wire type: another release, say.
        let error = read::<Accepted>(&endpoints::TRIGGER, reply(202, r#"{"id": 1}"#), &[202])
            .expect_err("an error");
        assert!(
            matches!(&error, ClientError::Decode { operation, detail }
                if operation == "POST /trigger-local" && detail.contains("deployment_id")),
            "{error:?}"
        );
        assert_eq!(error.status(), None);
    }
}
