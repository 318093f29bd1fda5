//! Triggers: how one environment is told to run its init script. One module per connection
//! method, all behind [`Trigger`].
//!
//! The coordinator owns timeouts and cancellation: it drops a trigger's future when the
//! environment's `timeout` passes or the deployment is cancelled. Every trigger therefore holds
//! its external resources (child processes, SSH channels, HTTP requests) in values that release
//! them on drop.

pub mod http_api;
pub mod local;
pub mod ssh;
pub mod webhook;

use std::future::Future;

use serde::Serialize;

use crate::{
    egress::Egress,
    environments::{Connection, Environment},
    model::LogSink,
};

/// What every trigger is told about the deployment it is part of.
#[derive(Debug, Clone)]
pub struct TriggerContext {
    pub deployment_id: String,
    pub version: String,
    /// The platform instance the environments should connect to, when known (EC2 phase or
    /// `EC2_INSTANCE_ID` / `EC2_PUBLIC_IP`).
    pub platform_instance_id: Option<String>,
    pub platform_ip: Option<String>,
    /// A rollback to `version` (the environment's previous version) rather than a deployment:
    /// scripts see `PA_ROLLBACK=1`, HTTP bodies `"rollback": true`.
    pub rollback: bool,
    pub log: LogSink,
    /// When the trigger must stop on its own: a trigger that owns local processes watches this
    /// and cleans up (kills its whole process tree, reaps it) before it returns, instead of
    /// being dropped mid-flight.
    pub stop: StopSignal,
    /// The run's fencing token (its lease's epoch): a node that took the run over sends with a
    /// higher one.
    pub fence: u64,
}

/// Headers that let an HTTP receiver recognise a trigger sent again after another node took the
/// run over: one `Idempotency-Key` per deployment, environment and direction, and the run's
/// fencing token in `X-PowerAutomation-Fence` (the higher one is the run that holds it now).
pub fn resend_headers(
    request: reqwest::RequestBuilder,
    context: &TriggerContext,
    environment_id: &str,
) -> reqwest::RequestBuilder {
    let key = if context.rollback {
        format!("{}/{environment_id}/rollback", context.deployment_id)
    } else {
        format!("{}/{environment_id}", context.deployment_id)
    };
    request
        .header("Idempotency-Key", key)
        .header("X-PowerAutomation-Fence", context.fence.to_string())
}

/// Cancel and deadline of one trigger.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    pub cancel: tokio_util::sync::CancellationToken,
    /// The environment's `timeout`, counted from the trigger's start.
    pub deadline: Option<tokio::time::Instant>,
}

impl StopSignal {
    /// Resolves when the trigger must stop, saying why.
    pub async fn stopped(&self) -> FailureKind {
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => FailureKind::Cancelled,
            _ = deadline => FailureKind::TimedOut,
        }
    }
}

/// A successful trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerSuccess {
    pub exit_code: Option<i32>,
    /// A short note for the result (e.g. "HTTP 202").
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Failed,
    TimedOut,
    /// The deployment was cancelled, stopped by its failure threshold, or the host is
    /// stopping; the message says what the trigger did about it (the run adds why).
    Cancelled,
}

/// A failed trigger: what went wrong, said so that an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerFailure {
    pub kind: FailureKind,
    pub message: String,
    pub exit_code: Option<i32>,
}

impl TriggerFailure {
    pub fn failed(message: impl Into<String>) -> TriggerFailure {
        TriggerFailure {
            kind: FailureKind::Failed,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn timed_out(message: impl Into<String>) -> TriggerFailure {
        TriggerFailure {
            kind: FailureKind::TimedOut,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn cancelled(message: impl Into<String>) -> TriggerFailure {
        TriggerFailure {
            kind: FailureKind::Cancelled,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn with_exit_code(mut self, code: Option<i32>) -> TriggerFailure {
        self.exit_code = code;
        self
    }
}

pub type TriggerResult = Result<TriggerSuccess, TriggerFailure>;

/// One way of starting an environment's init script.
pub trait Trigger: Send + Sync {
    fn run(&self, context: &TriggerContext) -> impl Future<Output = TriggerResult> + Send;
}

/// The trigger for an environment, chosen by its `connection_method`.
pub enum AnyTrigger {
    Ssh(ssh::SshTrigger),
    HttpApi(http_api::HttpApiTrigger),
    Webhook(webhook::WebhookTrigger),
    Local(local::LocalTrigger),
    /// What a test's script says (the core's own tests of the run).
    #[cfg(test)]
    Scripted(crate::run::script::ScriptedTrigger),
}

impl AnyTrigger {
    pub fn for_environment(environment: &Environment, egress: &Egress) -> AnyTrigger {
        let id = environment.environment_id.to_string();
        let timeout = environment.timeout;
        match &environment.connection {
            Connection::Ssh(ssh) => AnyTrigger::Ssh(ssh::SshTrigger::new(
                id,
                timeout,
                ssh.clone(),
                egress.clone(),
            )),
            Connection::HttpApi(api) => AnyTrigger::HttpApi(http_api::HttpApiTrigger::new(
                id,
                api.clone(),
                egress.clone(),
            )),
            Connection::Webhook(webhook) => AnyTrigger::Webhook(webhook::WebhookTrigger::new(
                id,
                webhook.clone(),
                egress.clone(),
            )),
            Connection::Local(local) => {
                AnyTrigger::Local(local::LocalTrigger::new(id, timeout, local.clone()))
            }
        }
    }

    /// Whether the trigger watches [`TriggerContext::stop`] itself (and must be let finish),
    /// rather than being dropped when it must stop.
    pub fn stops_itself(&self) -> bool {
        matches!(self, AnyTrigger::Local(_))
    }

    pub async fn run(&self, context: &TriggerContext) -> TriggerResult {
        match self {
            AnyTrigger::Ssh(trigger) => trigger.run(context).await,
            AnyTrigger::HttpApi(trigger) => trigger.run(context).await,
            AnyTrigger::Webhook(trigger) => trigger.run(context).await,
            AnyTrigger::Local(trigger) => trigger.run(context).await,
            #[cfg(test)]
            AnyTrigger::Scripted(trigger) => trigger.run(context).await,
        }
    }
}
