//! `http_api`: `POST http://host:port/api/deploy/init` with a bearer token.

use serde_json::json;

use super::{Trigger, TriggerContext, TriggerFailure, TriggerResult, TriggerSuccess};
use crate::{
    egress::{Egress, Refused},
    environments::HttpApiConnection,
};

/// How much of a failing answer's body is kept in the error.
pub const ERROR_BODY_BYTES: usize = 512;

pub struct HttpApiTrigger {
    environment_id: String,
    connection: HttpApiConnection,
    egress: Egress,
}

impl HttpApiTrigger {
    pub fn new(
        environment_id: String,
        connection: HttpApiConnection,
        egress: Egress,
    ) -> HttpApiTrigger {
        HttpApiTrigger {
            environment_id,
            connection,
            egress,
        }
    }
}

/// `http://host:port/<path>` (port 80 when unset).
pub fn environment_url(
    host: &str,
    port: Option<u16>,
    path: &str,
) -> Result<url::Url, TriggerFailure> {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let port = port.unwrap_or(80);
    url::Url::parse(&format!("http://{host}:{port}{path}")).map_err(|error| {
        TriggerFailure::failed(format!(
            "host {host:?} and port {port} do not make a URL: {error}"
        ))
    })
}

impl Trigger for HttpApiTrigger {
    async fn run(&self, context: &TriggerContext) -> TriggerResult {
        let url = environment_url(
            &self.connection.host,
            self.connection.port,
            "/api/deploy/init",
        )?;
        let body = json!({
            "deployment_id": context.deployment_id,
            "version": context.version,
            "environment_id": self.environment_id,
            "platform_instance_id": context.platform_instance_id,
            "platform_ip": context.platform_ip,
            "rollback": context.rollback,
        });
        context.log.info(format!("POST {url}")).await;
        let mut request = self
            .egress
            .post(&url)
            .map_err(|refused| refused_failure(&url, &refused))?
            .json(&body);
        request = super::resend_headers(request, context, &self.environment_id);
        if let Some(token) = &self.connection.api_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|error| request_failure(&url, &error))?;
        let status = response.status();
        if status.is_success() {
            context.log.info(format!("{url} answered {status}")).await;
            return Ok(TriggerSuccess {
                exit_code: None,
                detail: Some(format!("HTTP {}", status.as_u16())),
            });
        }
        let body = bounded_body(response).await;
        Err(TriggerFailure::failed(format!(
            "{url} answered {status}{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        )))
    }
}

/// A request not sent: its address is outside `allowed_target_networks`.
pub fn refused_failure(url: &url::Url, refused: &Refused) -> TriggerFailure {
    TriggerFailure::failed(format!("POST {url}: {refused}"))
}

/// Says what went wrong with a request that got no answer, without echoing headers (tokens).
pub fn request_failure(url: &url::Url, error: &reqwest::Error) -> TriggerFailure {
    if let Some(refused) = Refused::in_chain(error) {
        return refused_failure(url, refused);
    }
    let what = if error.is_connect() {
        "connection failed (is the service listening?)"
    } else if error.is_timeout() {
        return TriggerFailure::timed_out(format!("POST {url}: no answer in time"));
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        TriggerFailure::failed(format!("POST {url}: {what}"))
    } else {
        TriggerFailure::failed(format!("POST {url}: {what}: {cause}"))
    }
}

/// The first [`ERROR_BODY_BYTES`] of a body, as text.
pub async fn bounded_body(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = ERROR_BODY_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= ERROR_BODY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}
