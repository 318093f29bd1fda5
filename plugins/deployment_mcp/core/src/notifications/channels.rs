//! The channels a delivery goes out on: a webhook (the envelope as JSON, signed), a Slack
//! incoming webhook (a message) and mail over SMTP. Every connection goes to an address
//! `allowed_target_networks` allows: HTTP through the egress's client, SMTP to an address
//! resolved and checked here. Errors name no secret: URLs are left out of HTTP errors and the
//! SMTP URL's userinfo is never shown.

use std::time::Duration;

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::client::{Tls, TlsParameters},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use serde::Serialize;

use super::{ChannelSpec, Notice};
use crate::{egress::Egress, environments::FieldError};

/// The header that carries a signature of the body.
pub const SIGNATURE_HEADER: &str = "X-PowerAutomation-Signature";

/// A channel, checked: URLs parsed, addresses read.
#[derive(Debug, Clone)]
pub enum Channel {
    Webhook {
        url: url::Url,
        secret: Option<String>,
    },
    Slack {
        url: url::Url,
    },
    Email {
        smtp: SmtpTarget,
        to: Vec<Mailbox>,
        from: Mailbox,
    },
}

/// Where mail is handed over.
#[derive(Debug, Clone)]
pub struct SmtpTarget {
    host: String,
    port: u16,
    tls: SmtpTls,
    credentials: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmtpTls {
    None,
    StartTls,
    Wrapper,
}

fn http_url(field: &'static str, text: &str) -> Result<url::Url, FieldError> {
    let url = url::Url::parse(text)
        .map_err(|error| FieldError::new(field, format!("is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(FieldError::new(
            field,
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(url)
}

impl Channel {
    pub fn new(spec: &ChannelSpec) -> Result<Channel, FieldError> {
        Ok(match spec {
            ChannelSpec::Webhook { url, secret } => {
                if secret
                    .as_ref()
                    .is_some_and(|secret| secret.is_empty() || secret.len() > 1024)
                {
                    return Err(FieldError::new(
                        "channel.secret",
                        "must be 1 to 1024 bytes (leave it out to send unsigned)",
                    ));
                }
                Channel::Webhook {
                    url: http_url("channel.url", url)?,
                    secret: secret.clone(),
                }
            }
            ChannelSpec::Slack { webhook_url } => Channel::Slack {
                url: http_url("channel.webhook_url", webhook_url)?,
            },
            ChannelSpec::Email { smtp_url, to, from } => {
                if to.is_empty() || to.len() > 50 {
                    return Err(FieldError::new("channel.to", "must list 1 to 50 addresses"));
                }
                let to = to
                    .iter()
                    .map(|address| {
                        address.parse::<Mailbox>().map_err(|error| {
                            FieldError::new(
                                "channel.to",
                                format!("{address:?} is not a mail address: {error}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let from = from
                    .as_deref()
                    .unwrap_or("PowerAutomation <powerautomation@localhost>")
                    .parse::<Mailbox>()
                    .map_err(|error| {
                        FieldError::new("channel.from", format!("is not a mail address: {error}"))
                    })?;
                Channel::Email {
                    smtp: SmtpTarget::new(smtp_url)?,
                    to,
                    from,
                }
            }
        })
    }

    /// The channel's kind, as the deliveries show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Slack { .. } => "slack",
            Channel::Email { .. } => "email",
        }
    }
}

impl SmtpTarget {
    fn new(text: &str) -> Result<SmtpTarget, FieldError> {
        const FIELD: &str = "channel.smtp_url";
        let url = url::Url::parse(text).map_err(|error| {
            FieldError::new(
                FIELD,
                format!(
                    "is not a URL: {}",
                    crate::redact::urls_in(&error.to_string())
                ),
            )
        })?;
        let (tls, default_port) = match (url.scheme(), url.query()) {
            ("smtp", None) => (SmtpTls::None, 25),
            ("smtp", Some("tls=required")) => (SmtpTls::StartTls, 587),
            ("smtps", None) => (SmtpTls::Wrapper, 465),
            _ => {
                return Err(FieldError::new(
                    FIELD,
                    "must be smtp://host[:port], smtp://host[:port]?tls=required (STARTTLS) or smtps://host[:port], with user:password@ when the server asks for it",
                ))
            }
        };
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| FieldError::new(FIELD, "needs a host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(FieldError::new(
                FIELD,
                "takes no path or fragment: smtp://[user:password@]host[:port]",
            ));
        }
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = (!url.username().is_empty())
            .then(|| (decode(url.username()), decode(url.password().unwrap_or(""))));
        if credentials.is_some() && tls == SmtpTls::None {
            return Err(FieldError::new(
                FIELD,
                "with a user and password needs TLS, so the password is not sent in the clear: smtps://… or smtp://…?tls=required",
            ));
        }
        Ok(SmtpTarget {
            host,
            port: url.port().unwrap_or(default_port),
            tls,
            credentials,
        })
    }
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The receiver accepted it (its HTTP status, or SMTP's 250).
    Accepted { status: u16 },
    /// It did not: the status when there was an answer, and why.
    Failed { status: Option<u16>, error: String },
}

/// What a delivery is, as the channel sends it: the envelope a webhook gets as its body, and
/// what a message says of it.
pub struct Outgoing<'a> {
    /// The delivery's id: the `Idempotency-Key` and the mail's `Message-ID`, the same on every
    /// attempt.
    pub id: &'a str,
    /// The exact JSON body of a webhook (stored with the delivery, so every attempt sends the
    /// same bytes).
    pub body: &'a str,
    pub notice: &'a Notice,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// Where a person can look at the deployment, when the settings say.
    pub link: Option<String>,
}

#[derive(Serialize)]
struct SlackMessage {
    text: String,
}

/// Sends `outgoing` on `channel`, cut off after `timeout`.
pub async fn send(
    egress: &Egress,
    channel: &Channel,
    outgoing: &Outgoing<'_>,
    timeout: Duration,
) -> Sent {
    let sending = async {
        match channel {
            Channel::Webhook { url, secret } => {
                let request = match egress.post_once(url) {
                    Ok(request) => request,
                    Err(refused) => return failed(None, refused.to_string()),
                };
                let mut request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("Idempotency-Key", outgoing.id)
                    .header("X-PowerAutomation-Event", outgoing.notice.event.as_str())
                    .header("X-PowerAutomation-Attempt", outgoing.attempt.to_string())
                    .body(outgoing.body.to_owned());
                if let Some(secret) = secret {
                    match crate::triggers::webhook::signature(secret, outgoing.body.as_bytes()) {
                        Ok(signature) => request = request.header(SIGNATURE_HEADER, signature),
                        Err(error) => return failed(None, error.message),
                    }
                }
                http(request).await
            }
            Channel::Slack { url } => {
                let mut text = outgoing.notice.summary();
                if let Some(link) = &outgoing.link {
                    text.push_str(&format!(" <{link}|open>"));
                }
                let request = match egress.post_once(url) {
                    Ok(request) => request.json(&SlackMessage { text }),
                    Err(refused) => return failed(None, refused.to_string()),
                };
                http(request).await
            }
            Channel::Email { smtp, to, from } => mail(egress, smtp, to, from, outgoing).await,
        }
    };
    match tokio::time::timeout(timeout, sending).await {
        Ok(sent) => sent,
        Err(_) => failed(
            None,
            format!("no answer within {} s", timeout.as_secs_f64()),
        ),
    }
}

fn failed(status: Option<u16>, error: impl Into<String>) -> Sent {
    Sent::Failed {
        status,
        error: error.into(),
    }
}

async fn http(request: reqwest::RequestBuilder) -> Sent {
    match request.send().await {
        Ok(response) if response.status().is_success() => Sent::Accepted {
            status: response.status().as_u16(),
        },
        Ok(response) => {
            let status = response.status();
            failed(
                Some(status.as_u16()),
                format!("the receiver answered {status}"),
            )
        }
        // The URL may carry a token (Slack's path): errors leave it out.
        Err(error) => failed(None, describe(&error.without_url())),
    }
}

/// An error with its causes, one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    if let Some(refused) = crate::egress::Refused::in_chain(error) {
        return refused.to_string();
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn mail(
    egress: &Egress,
    smtp: &SmtpTarget,
    to: &[Mailbox],
    from: &Mailbox,
    outgoing: &Outgoing<'_>,
) -> Sent {
    // Resolved and checked here, so the transport connects only to an allowed address.
    let address = match tokio::net::lookup_host((smtp.host.as_str(), smtp.port)).await {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            match addresses
                .iter()
                .find(|address| egress.networks().allows(address.ip()))
            {
                Some(address) => *address,
                None => match addresses.first() {
                    Some(address) => match egress.networks().check(address.ip()) {
                        Err(refused) => return failed(None, refused.to_string()),
                        Ok(()) => *address,
                    },
                    None => return failed(None, format!("{} resolves to no address", smtp.host)),
                },
            }
        }
        Err(error) => return failed(None, format!("cannot resolve {}: {error}", smtp.host)),
    };
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.ip().to_string())
            .port(address.port())
            .timeout(Some(Duration::from_secs(30)));
    if smtp.tls != SmtpTls::None {
        let parameters = match TlsParameters::new(smtp.host.clone()) {
            Ok(parameters) => parameters,
            Err(error) => return failed(None, format!("TLS for {}: {error}", smtp.host)),
        };
        builder = builder.tls(match smtp.tls {
            SmtpTls::Wrapper => Tls::Wrapper(parameters),
            _ => Tls::Required(parameters),
        });
    }
    if let Some((user, password)) = &smtp.credentials {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            password.clone(),
        ));
    }
    let transport = builder.build();
    let mut text = outgoing.notice.summary();
    text.push_str("\n\n");
    if let Some(link) = &outgoing.link {
        text.push_str(&format!("{link}\n\n"));
    }
    text.push_str(outgoing.body);
    text.push('\n');
    let mut message = Message::builder()
        .from(from.clone())
        .subject(format!("[PowerAutomation] {}", outgoing.notice.summary()))
        .message_id(Some(format!("<{}@powerautomation>", outgoing.id)))
        .header(ContentType::TEXT_PLAIN);
    for recipient in to {
        message = message.to(recipient.clone());
    }
    let message = match message.body(text) {
        Ok(message) => message,
        Err(error) => return failed(None, format!("cannot build the mail: {error}")),
    };
    match transport.send(message).await {
        Ok(response) => Sent::Accepted {
            status: u16::from(response.code()),
        },
        Err(error) => failed(
            error.status().map(u16::from),
            // lettre's errors name the server as it was given: an address, no userinfo.
            describe(&error),
        ),
    }
}
