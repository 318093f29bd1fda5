//! `webhook`: POST of an `ec2_deployment_completed` event, signed with HMAC-SHA256 when the
//! environment has a `webhook_secret`.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use super::{
    http_api::{bounded_body, environment_url, refused_failure, request_failure},
    Trigger, TriggerContext, TriggerFailure, TriggerResult, TriggerSuccess,
};
use crate::{
    egress::Egress,
    environments::{WebhookConnection, WebhookTarget},
    model::Timestamp,
};

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-PowerAutomation-Signature";
pub const EVENT: &str = "ec2_deployment_completed";
/// The event a rollback sends (with the previous version).
pub const ROLLBACK_EVENT: &str = "deployment_rollback";

pub struct WebhookTrigger {
    environment_id: String,
    connection: WebhookConnection,
    egress: Egress,
}

impl WebhookTrigger {
    pub fn new(
        environment_id: String,
        connection: WebhookConnection,
        egress: Egress,
    ) -> WebhookTrigger {
        WebhookTrigger {
            environment_id,
            connection,
            egress,
        }
    }

    fn url(&self) -> Result<url::Url, TriggerFailure> {
        match &self.connection.target {
            WebhookTarget::Url(url) => url::Url::parse(url).map_err(|error| {
                TriggerFailure::failed(format!("webhook_url is not a URL: {error}"))
            }),
            WebhookTarget::HostPort { host, port } => {
                environment_url(host, *port, "/webhook/deploy")
            }
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> Result<String, TriggerFailure> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .map_err(|_| TriggerFailure::failed("webhook_secret cannot be used as an HMAC key"))?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

impl Trigger for WebhookTrigger {
    async fn run(&self, context: &TriggerContext) -> TriggerResult {
        let url = self.url()?;
        let event = if context.rollback {
            ROLLBACK_EVENT
        } else {
            EVENT
        };
        let body = json!({
            "event": event,
            "rollback": context.rollback,
            "deployment_id": context.deployment_id,
            "version": context.version,
            "environment_id": self.environment_id,
            "instance_id": context.platform_instance_id,
            "public_ip": context.platform_ip,
            "timestamp": Timestamp::now(),
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut request = self
            .egress
            .post(&url)
            .map_err(|refused| refused_failure(&url, &refused))?
            .header("content-type", "application/json");
        request = super::resend_headers(request, context, &self.environment_id);
        if let Some(secret) = &self.connection.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, &body)?);
        }
        context
            .log
            .info(format!("POST {url} (event {event})"))
            .await;
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|error| request_failure(&url, &error))?;
        let status = response.status().as_u16();
        if status == 200 || status == 202 {
            context.log.info(format!("{url} answered {status}")).await;
            return Ok(TriggerSuccess {
                exit_code: None,
                detail: Some(format!("HTTP {status}")),
            });
        }
        let body = bounded_body(response).await;
        Err(TriggerFailure::failed(format!(
            "{url} answered {status} (200 or 202 expected){}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?")
                .ok()
                .unwrap_or_default(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
